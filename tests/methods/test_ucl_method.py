"""UCL method: EMA key encoder, negatives through the query encoder, warm-up logits, the epoch handler; frame IO."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from medssl_monai.data.ucl_sampling import UCLFrameSampler
from medssl_monai.methods.ucl import UCL, FramePrepareBatch, UCLEpochHandler, UCLPrepareBatch, normalize_frames
from medssl_monai.networks.resnet import FrameClassifier, feature_dim, load_encoder_weights, resnet_encoder
from medssl_monai.transforms.frames import FrameResizeCropd, LoadFramesd, expand_frames


class _Linear(torch.nn.Module):
    """A tiny encoder (flatten + linear) so the method's algebra can be checked by hand."""

    def __init__(self, d_in: int = 12, d: int = 6) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(d_in, d)
        self.out_features = d

    def forward(self, x):
        return self.fc(x.flatten(1))


def _frames(b=3, k=2):
    torch.manual_seed(0)
    return torch.randn(b, 2 + k, 3, 2, 2)


def test_key_encoder_is_ema_of_query():
    m = UCL(_Linear(), out_dim=4, momentum=0.9)
    for pk, pq in zip(m.key.parameters(), m.query.parameters()):
        torch.testing.assert_close(pk, pq)  # initialised as a copy
        assert not pk.requires_grad
    before = [p.detach().clone() for p in m.key.parameters()]
    with torch.no_grad():
        for p in m.query.parameters():
            p.add_(1.0)
    m.update_teacher()
    for pk, pb, pq in zip(m.key.parameters(), before, m.query.parameters()):
        torch.testing.assert_close(pk, 0.9 * pb + 0.1 * pq)
    m.update_teacher(0.0)
    for pk, pq in zip(m.key.parameters(), m.query.parameters()):
        torch.testing.assert_close(pk, pq)


def test_forward_matches_hand_assembled_loss():
    m = UCL(_Linear(), out_dim=4, moco_t=0.2, soft_nn_t=0.1, support_size=2, warmup_epochs=0)
    x = _frames()
    out = m(x)
    F = torch.nn.functional
    q = F.normalize(m.query(x[:, 0]), dim=1)
    p = F.normalize(m.key(x[:, 1]), dim=1)
    n = F.normalize(m.query(x[:, 2:].flatten(0, 1)), dim=1).view(3, 2, -1)
    bank = n.flatten(0, 1)
    logits = []
    for i in range(3):
        others = torch.cat([bank[j * 2 : j * 2 + 2] for j in range(3) if j != i])  # other videos only
        sim = others @ q[i]
        top, idx = sim.topk(2)
        w = torch.softmax(top / 0.1, 0)
        mixed = (w[:, None] * others[idx]).sum(0)  # the weighted sum
        logits.append(torch.cat([(q[i] * p[i]).sum()[None], n[i] @ q[i], (q[i] * mixed).sum()[None]]))
    ref = F.cross_entropy(torch.stack(logits) / 0.2, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(out["loss"], ref)
    # gradient reaches the query encoder through the intra-video negatives, never the key encoder
    out["loss"].backward()
    assert m.encoder.fc.weight.grad is not None and m.encoder.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.key.parameters())


def test_warmup_uses_positive_and_mixed_only_in_training():
    m = UCL(_Linear(), out_dim=4, warmup_epochs=2)
    x = _frames()
    m.set_epoch(1)
    assert m.in_warmup()
    warm = m(x)["loss"]
    m.set_epoch(2)
    full = m(x)["loss"]
    assert warm.item() < full.item()  # 2-way CE vs 4-way CE on the same embeddings
    m.set_epoch(0)
    m.eval()
    assert not m.in_warmup()  # validation always scores the full task
    torch.testing.assert_close(m(x)["loss"], full)


def test_plain_moco_ablation_runs_and_needs_a_negative():
    m = UCL(_Linear(), out_dim=4, intra_negatives=False, mixed_negative=False, cross_negatives=True)
    assert torch.isfinite(m(_frames())["loss"])
    with pytest.raises(ValueError):
        UCL(_Linear(), intra_negatives=False, mixed_negative=False)


def test_epoch_handler_sets_sampler_and_method_before_the_epoch():
    sampler = UCLFrameSampler([40] * 4, start_epoch=1, max_epochs=4)
    m = UCL(_Linear(), out_dim=4)
    seen = []
    engine = Engine(lambda e, b: seen.append((e.state.epoch, sampler.epoch, m.epoch, sampler.band())))
    UCLEpochHandler(sampler, m).attach(engine)
    engine.run([0], max_epochs=3)
    assert [s[:3] for s in seen] == [(1, 0, 0), (2, 1, 1), (3, 2, 2)]
    assert seen[2][3][0] < seen[1][3][0] == pytest.approx(0.2)


def test_prepare_batches_normalise_on_channel_axis():
    x = torch.full((2, 4, 3, 2, 2), 255, dtype=torch.uint8)
    out = UCLPrepareBatch()({"image": x})[0]
    torch.testing.assert_close(
        out[0, 0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )
    img, lab = FramePrepareBatch()({"image": x[:, 0], "label": torch.tensor([1, 2])})
    assert img.shape == (2, 3, 2, 2) and lab.dtype == torch.long
    torch.testing.assert_close(normalize_frames(torch.zeros(1, 3, 1, 1))[0, 0], torch.tensor([[-0.485 / 0.229]]))


def test_load_frames_and_resize_crop(tmp_path):
    import cv2

    folder = tmp_path / "Video_1"
    folder.mkdir()
    for t in range(6):
        cv2.imwrite(str(folder / f"{t:05d}.png"), np.full((8, 12), 10 * t, np.uint8))
    load = LoadFramesd("image", cache_dir=tmp_path / "cache")
    d = load({"image": str(folder), "frame_indices": [4, 1, 1]})
    assert d["image"].shape == (3, 3, 8, 12) and d["image"].dtype == torch.uint8
    assert d["image"][:, 0, 0, 0].tolist() == [40, 10, 10]
    assert load({"image": str(folder), "frame_indices": 5})["image"].shape == (3, 8, 12)
    crop = FrameResizeCropd("image", spatial_size=4, resize_to=4, random_crop=False)
    assert crop(d)["image"].shape == (3, 3, 4, 4)  # shorter side 8 -> 4: 4 x 6, centre crop 4 x 4
    items = expand_frames([{"image": "v", "num_frames": 10}], frame_stride=3)
    assert [i["frame_index"] for i in items] == [0, 3, 6, 9]


def test_classifier_head_freezing_and_weight_loading(tmp_path):
    enc = resnet_encoder(18, widen_factor=0.125)
    assert feature_dim(enc) == 64 and enc(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    # a reference-style checkpoint: prefixed keys plus an fc that must be dropped
    state = {f"module.encoder_q.{k}": v + 1 for k, v in enc.state_dict().items()}
    state["module.encoder_q.fc.0.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": state}, tmp_path / "ref.pth.tar")
    clf = FrameClassifier(resnet_encoder(18, widen_factor=0.125), num_classes=3, finetune="last_stage")
    res = load_encoder_weights(clf.encoder, tmp_path / "ref.pth.tar")
    assert res["missing"] == []
    torch.testing.assert_close(clf.encoder.conv1.weight, enc.conv1.weight + 1)
    trainable = {n.split(".")[1] for n, p in clf.named_parameters() if p.requires_grad and n.startswith("encoder.")}
    assert trainable == {"layer4"}
    assert [m.out_features for m in clf.head if isinstance(m, torch.nn.Linear)] == [256, 3]
    assert clf(torch.rand(2, 3, 32, 32)).shape == (2, 3)
