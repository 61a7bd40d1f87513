"""DISCOVR method: EMA teachers, token-aligned cluster targets, losses and gradients; the VideoMAE baseline."""

from __future__ import annotations

import torch
from ignite.engine import Engine

from medssl_monai.engines.ssl import SetEpochHandler
from medssl_monai.methods.discovr import (
    DISCOVR,
    VideoMAE,
    patchify_clip,
    standardize_tokens,
    tubelet_targets,
)
from medssl_monai.networks.videovit import VideoViT

KW = {
    "img_size": 16,
    "num_frames": 4,
    "patch_size": 8,
    "hidden_size": 16,
    "mlp_dim": 32,
    "num_layers": 1,
    "num_heads": 2,
}
SMALL = {
    "decoder_dim": 8,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "dino_out_dim": 32,
    "dino_hidden_dim": 16,
    "dino_bottleneck_dim": 8,
    "num_prototypes": 6,
    "num_local_views": 2,
    "num_image_views": 2,
    "global_mask_ratio": 0.5,
    "local_mask_ratio": 0.5,
    "image_mask_ratio": 0.5,
}


def _method(**kw) -> DISCOVR:
    torch.manual_seed(0)
    return DISCOVR(VideoViT(**KW), **{**SMALL, **kw})


def test_teacher_is_ema_of_student():
    m = _method()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    before = {k: v.clone() for k, v in m.video_teacher.state_dict().items()}
    m(torch.randn(2, 3, 4, 16, 16))["loss"].backward()
    opt.step()
    student = m.encoder.state_dict()
    assert not torch.equal(student["cls_token"], before["cls_token"])  # the student moved
    m.update_teacher(0.9)
    for k, v in m.video_teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * student[k])
    head_t, head_s = m.image_teacher_head.last_layer_v, m.image_head.last_layer_v
    assert not torch.equal(head_t, head_s)  # teachers lag their students


def test_targets_and_decoder_tokens_index_the_same_tubelet():
    m = _method()
    x0 = torch.zeros(1, 3, 4, 16, 16)
    x1 = x0.clone()
    x1[:, :, 2, 8:16, 0:8] = 1.0  # first frame of tubelet t=1, patch (h=1, w=0): video token 1*4 + 2 = 6
    with torch.no_grad():
        video_changed = (m.encoder.tokens(x1) - m.encoder.tokens(x0)).abs().sum(-1)[0].nonzero().flatten()

        def targets(x):
            frames = x.transpose(1, 2).reshape(4, 3, 16, 16)
            tok = m.image_teacher.tokens(frames).reshape(1, 4, 4, -1)  # B x T x n x D, before attention
            return tubelet_targets(tok, m.encoder.tubelet_size, "first")

        target_changed = (targets(x1) - targets(x0)).abs().sum(-1)[0].nonzero().flatten()
    assert video_changed.tolist() == [6] and target_changed.tolist() == [6]


def test_tubelet_targets_by_hand():
    tok = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(1, 4, 3, 2)  # B=1, T=4, n=3, D=2
    first = tubelet_targets(tok, 2, "first")
    assert first.shape == (1, 6, 2)
    torch.testing.assert_close(first[0, 4], tok[0, 2, 1])  # token t'=1, p=1 <- frame 2, patch 1
    mean = tubelet_targets(tok, 2, "mean")
    torch.testing.assert_close(mean[0, 4], (tok[0, 2, 1] + tok[0, 3, 1]) / 2)
    s = standardize_tokens(torch.tensor([[[1.0], [2.0], [3.0]]]), dim=1)
    torch.testing.assert_close(s.flatten(), torch.tensor([-1.0, 0.0, 1.0]), rtol=1e-5, atol=1e-5)


def test_losses_and_gradients():
    m = _method()
    out = m(torch.randn(2, 3, 4, 16, 16))
    assert set(out) == {"loss", "loss_cluster", "loss_video_dino", "loss_image_dino"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name in ("encoder", "decoder", "video_head", "image_head", "image_student", "prototypes"):
        grads = [p.grad for p in getattr(m, name).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    for name in ("video_teacher", "image_teacher", "video_teacher_head", "image_teacher_head"):
        assert all(p.grad is None for p in getattr(m, name).parameters()), name


def test_eval_masks_are_fixed_and_epoch_handler():
    m = _method().eval()
    x = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        a, b = m(x)["loss"], m(x)["loss"]
    assert torch.equal(a, b)
    engine = Engine(lambda e, b: None)
    SetEpochHandler(m).attach(engine)
    engine.run([0], max_epochs=3)
    assert m.epoch == 2


def test_videomae_targets_and_loss():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 1, 2, 4, 4)
    p = patchify_clip(x, tubelet_size=2, patch_size=2)
    assert p.shape == (1, 4, 8, 1)
    # token 1 = tubelet (t=0, h=0, w=1): frame 0 rows 0-1 cols 2-3, then frame 1
    assert p[0, 1, :, 0].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    torch.manual_seed(0)
    mae = VideoMAE(VideoViT(**KW), decoder_dim=8, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.5)
    out = mae(torch.randn(2, 3, 4, 16, 16))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and mae.encoder.cls_token.grad is not None
    assert mae.video_teacher is mae.encoder


def test_forward_scores_tubelet_aligned_targets():
    # the targets forward() scores against the prototypes are the image teacher's patch tokens of the first
    # frame of each tubelet, standardised per frame, in the encoder's (t, h, w) order; the reference's
    # `[:, ::2]` over the flattened (t * n) axis keeps patches 0 and 2 of every frame instead and fails here
    m = _method().eval()
    x = torch.randn(2, 3, 4, 16, 16)
    seen = []
    m.prototypes.register_forward_pre_hook(lambda mod, args, kwargs: seen.append((args[0], kwargs)), with_kwargs=True)
    with torch.no_grad():
        m(x)
        frames = x.transpose(1, 2).reshape(8, 3, 16, 16)
        tok = m.image_teacher.forward_features(frames)[:, 1:]  # (B * T) x n x D
        tok = (tok - tok.mean(1, keepdim=True)) / (tok.var(1, keepdim=True).sqrt() + 1e-6)
        expected = tok.reshape(2, 4, 4, -1)[:, 0::2].reshape(-1, tok.shape[-1])  # frames 0 and 2, all patches
    targets = [z for z, kw in seen if kw.get("detach")]
    assert len(targets) == 1
    torch.testing.assert_close(targets[0], expected)
    flat_every_other = tok.reshape(2, 16, -1)[:, ::2].reshape(-1, tok.shape[-1])  # the reference's indexing
    assert not torch.allclose(targets[0], flat_every_other)


def test_image_dino_loss_scaled_as_the_reference_by_default():
    # reference: image DINO loss x 256 / frames in the step (chunks of <= 1024 frames): 0.25 at 16 x 64
    m = _method()
    assert m.image_dino_scale == "reference"
    assert m.image_dino_factor(16 * 64) == 0.25 and m.image_dino_factor(48 * 64) == 0.25
    assert m.image_dino_factor(8) == 32.0
    assert _method(image_dino_scale="none").image_dino_factor(1024) == 1.0
    x = torch.randn(2, 3, 4, 16, 16)  # 8 frames: factor 32
    with torch.no_grad():
        ref = _method().eval()(x)
        plain = _method(image_dino_scale="none").eval()(x)
    torch.testing.assert_close(ref["loss_image_dino"], 32.0 * plain["loss_image_dino"])
    torch.testing.assert_close(ref["loss"] - ref["loss_image_dino"], plain["loss"] - plain["loss_image_dino"])


def test_dino_centres_default_to_logits():
    m = _method()
    assert m.video_dino_loss.center_update == "logits" and m.image_dino_loss.center_update == "logits"
    assert _method(center_update="probs").image_dino_loss.center_update == "probs"
