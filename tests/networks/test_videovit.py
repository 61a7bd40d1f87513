"""VideoViT / ImageViT / VideoMAEDecoder: shapes, visible-token encoding, natural-order decoder outputs."""

from __future__ import annotations

import numpy as np
import torch

from medssl_monai.networks.videovit import (
    ImageViT,
    VideoMAEDecoder,
    VideoViT,
    VideoViTClassifier,
    sinusoid_table,
    visible_tokens,
)

KW = {
    "img_size": 16,
    "num_frames": 4,
    "patch_size": 8,
    "hidden_size": 16,
    "mlp_dim": 32,
    "num_layers": 1,
    "num_heads": 2,
}


def test_sinusoid_table_values():
    t = sinusoid_table(3, 4)[0]
    # position 2, channel pair 1: angle 2 / 10000^(2/4) = 0.02
    assert torch.allclose(
        t[2], torch.tensor([np.sin(2.0), np.cos(2.0), np.sin(0.02), np.cos(0.02)], dtype=torch.float32)
    )


def test_tokens_follow_tubelet_order():
    net = VideoViT(**KW)
    assert net.grid_size == (2, 2, 2) and net.num_patches == 8
    x = torch.zeros(1, 3, 4, 16, 16)
    x[:, :, 2:4, 8:16, 0:8] = 1.0  # tubelet t=1, h=1, w=0 -> token 1*4 + 1*2 + 0 = 6
    with torch.no_grad():
        tok = net.patch_embedding(x).flatten(2).transpose(1, 2)
        bias_only = net.patch_embedding(torch.zeros(1, 3, 2, 8, 8)).flatten()
    changed = [i for i in range(8) if not torch.allclose(tok[0, i], bias_only)]
    assert changed == [6]


def test_visible_only_encoding_matches_dropping_tokens():
    torch.manual_seed(0)
    net = VideoViT(**KW).eval()
    x = torch.randn(2, 3, 4, 16, 16)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, [1, 3, 5, 7]] = True
    with torch.no_grad():
        out = net.forward_features(x, mask)
        tok = net.tokens(x)[:, [0, 2, 4, 6]]
        ref = net.encode(tok)  # no mask: the same visible tokens, encoded directly
    assert out.shape == (2, 5, 16)
    torch.testing.assert_close(out, ref)
    assert net(x).shape == (2, 16)
    assert visible_tokens(net.tokens(x), mask).shape == (2, 4, 16)


def test_other_clip_sizes_and_image_vit():
    net = VideoViT(**KW)
    assert net(torch.randn(1, 3, 2, 8, 8)).shape == (1, 16)
    img = ImageViT(img_size=16, patch_size=8, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2)
    assert img.grid_size == (1, 2, 2)
    assert img.forward_features(torch.randn(5, 3, 16, 16)).shape == (5, 5, 16)
    assert not img.blocks[0].self_attn.in_proj_bias.requires_grad  # qkv_bias=False


def test_decoder_row_i_is_token_i():
    """Decoder outputs are in natural token order: a permutation of the visible tokens' positions permutes rows."""
    torch.manual_seed(0)
    dec = VideoMAEDecoder(num_patches=8, encoder_dim=16, decoder_dim=8, depth=1, num_heads=2, out_channels=4).eval()
    mask = torch.tensor([[True, False, True, False, True, True, False, True]])
    vis = torch.randn(1, 3, 16)
    with torch.no_grad():
        out = dec(vis, mask)
        # reference order: [visible..., masked...] with their own positions; reorder it back by hand
        v = dec.encoder_to_decoder(vis) + dec.pos_embed[:, ~mask[0]]
        m = dec.mask_token + dec.pos_embed[:, mask[0]]
        seq = torch.cat([v, m], 1)
        for blk in dec.blocks:
            seq = blk(seq)
        ref = dec.head(dec.norm(seq))
    order = torch.cat([torch.nonzero(~mask[0]).flatten(), torch.nonzero(mask[0]).flatten()])
    torch.testing.assert_close(out[0, order], ref[0], rtol=1e-5, atol=1e-5)


def test_classifier_freezes_encoder():
    clf = VideoViTClassifier(num_classes=2, **KW).train()
    assert not clf.encoder.training and not any(p.requires_grad for p in clf.encoder.parameters())
    assert clf(torch.randn(2, 3, 4, 16, 16)).shape == (2, 2)


def test_video_unetr_shapes_and_encoder_keys():
    from medssl_monai.networks.unetr import VideoUNETR

    net = VideoUNETR(
        feature_size=4, img_size=32, num_frames=4, patch_size=16, hidden_size=16, mlp_dim=32, num_layers=2, num_heads=2
    )
    assert net.skip_layers == (1, 1, 2, 2)
    assert net(torch.randn(1, 3, 4, 32, 32)).shape == (1, 1, 4, 32, 32)
    # a pretrained VideoViT state_dict loads into the encoder unchanged
    vit = VideoViT(img_size=32, num_frames=4, patch_size=16, hidden_size=16, mlp_dim=32, num_layers=2, num_heads=2)
    net.encoder.load_state_dict(vit.state_dict())
    hs = vit.hidden_states(torch.randn(1, 3, 4, 32, 32))
    assert len(hs) == 2 and hs[0].shape == (1, 8, 16)


def test_classifier_head_is_the_reference_probe():
    # run_class_finetuning.py with the CLS: the encoder's normed CLS goes straight into `head` (no BatchNorm),
    # initialised at trunc_normal(0.02) x init_scale 0.001; "batchnorm" is MAE's probe
    clf = VideoViTClassifier(num_classes=2, **KW)
    assert isinstance(clf.norm, torch.nn.Identity) and clf.head.weight.abs().max() < 1e-3
    x = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), clf.head(clf.encoder(x)))
    bn = VideoViTClassifier(num_classes=2, head_norm="batchnorm", **KW)
    assert isinstance(bn.norm, torch.nn.BatchNorm1d) and not bn.norm.affine
