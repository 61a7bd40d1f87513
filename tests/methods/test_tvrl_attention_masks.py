"""TVRL attends without a key-padding mask when no frame is padded (SDPA's flash kernel on a GPU).

The decision is made in the loader (:func:`drop_unpadded_masks_collate`, on the host): an unpadded view reaches the
method with ``frame_mask=None``. Checked here: ``None`` gives the loss and gradients of the all-valid mask, the
attention blocks then get no mask (except where frames are masked on purpose), and padded batches keep exactly
the masks they had.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_tvrl import tiny_tvrl
from torch.nn import functional as F

from medssl_monai.methods.tvrl import FRAMEWORKS, TVRLPretraining, TwoViewPrepareBatch
from medssl_monai.networks.spatiotemporal import key_padding_mask
from medssl_monai.transforms.tvrl import drop_unpadded_masks_collate

ROOT = Path(__file__).resolve().parents[2]
#: (framework, options): every framework, TVRL's v1 masking and MAE's tube masking
CASES = [(f, {}) for f in FRAMEWORKS] + [("tvrl", {"mask_mode": "v1"}), ("mae", {"mae_mask_type": "tube"})]
B, T = 3, 4


def _method(framework: str, **kw) -> TVRLPretraining:
    return tiny_tvrl(framework, max_frames=T, mlm_start_epoch=0, **kw)


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, 1, T, 16, 16, generator=g), torch.rand(B, 1, T, 16, 16, generator=g)


def _run(m: TVRLPretraining, masks: tuple[torch.Tensor | None, torch.Tensor | None]):
    m.zero_grad()
    x, x2 = _views()
    torch.manual_seed(7)  # the same frame / token masks on every call
    out = m(x, x2, frame_mask=masks[0], frame_mask_2=masks[1])
    out["loss"].backward()
    return out["loss"].detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


class _Recorder:
    """The ``attn_mask`` each attention block of the method gets, by part: ``frame``, ``temporal``, ``decoder``."""

    def __init__(self, m: TVRLPretraining) -> None:
        self.calls: dict[str, list[torch.Tensor | None]] = {"frame": [], "temporal": [], "decoder": []}
        parts = {"frame": m.encoder.frame_encoder.blocks, "temporal": m.encoder.temporal.blocks}
        if hasattr(m, "decoder"):
            parts["decoder"] = m.decoder.blocks
        for name, blocks in parts.items():
            for blk in blocks:
                blk.register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            self.calls[name].append(kwargs.get("attn_mask"))

        return hook


@pytest.mark.parametrize(("framework", "options"), CASES)
def test_no_mask_equals_the_all_valid_mask(framework, options):
    m = _method(framework, **options)
    ones = torch.ones(B, T, dtype=torch.bool)
    loss_none, grads_none = _run(m, (None, None))
    loss_ones, grads_ones = _run(m, (ones, ones))
    torch.testing.assert_close(loss_none, loss_ones, rtol=1e-5, atol=1e-5)
    assert grads_none.keys() == grads_ones.keys() and grads_none
    for k in grads_none:
        torch.testing.assert_close(grads_none[k], grads_ones[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize(("framework", "options"), CASES)
def test_unpadded_views_reach_attention_without_a_mask(framework, options):
    m = _method(framework, **options)
    rec = _Recorder(m)
    _run(m, (None, None))
    assert all(mask is None for mask in rec.calls["temporal"][1::2])  # prediction branch / second view / ...
    if framework in ("tvrl", "tvrl_te") and options.get("mask_mode", "v2") == "v2":
        # the contrastive branch hides the frames masked for prediction: a mask by design, not padding
        assert all(mask is not None for mask in rec.calls["temporal"][0::2])
    else:
        assert all(mask is None for mask in rec.calls["temporal"])
    assert all(mask is None for mask in rec.calls["decoder"])
    if framework == "mae" and options.get("mae_mask_type", "random") == "random":
        assert all(mask is not None for mask in rec.calls["frame"])  # frames keep different numbers of tokens
    else:
        assert all(mask is None for mask in rec.calls["frame"])
    assert rec.calls["temporal"]


def test_mae_tube_tokens_without_a_mask_equal_the_all_valid_token_mask(monkeypatch):
    """Tube masks keep the same patches in every frame: the count is a shape and no token is padding."""
    m = _method("mae", mae_mask_type="tube")
    loss_new, grads_new = _run(m, (None, None))
    fe = m.encoder.frame_encoder
    forward_tokens = fe.forward_tokens

    def all_valid(tokens, token_mask=None):  # the previous call: a token mask, all True under tube masks
        assert token_mask is None
        return forward_tokens(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))

    monkeypatch.setattr(fe, "forward_tokens", all_valid)
    loss_old, grads_old = _run(m, (None, None))
    torch.testing.assert_close(loss_new, loss_old, rtol=1e-5, atol=1e-5)
    for k in grads_new:
        torch.testing.assert_close(grads_new[k], grads_old[k], rtol=1e-5, atol=1e-5, msg=k)


def test_unpadded_csimclr_calls_sdpa_without_a_mask(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", record)
    _run(_method("csimclr"), (None, None))
    assert seen and all(mask is None for mask in seen)


@pytest.mark.parametrize(("framework", "options"), CASES)
def test_padded_views_keep_their_masks(framework, options):
    m = _method(framework, **options)
    rec = _Recorder(m)
    fm = torch.ones(B, T, dtype=torch.bool)
    fm[0, :2] = False  # the first clip left-padded by two frames (a short series)
    fm2 = torch.ones(B, T, dtype=torch.bool)
    fm2[1, 0] = False
    _run(m, (fm, fm2))
    temporal = rec.calls["temporal"]
    views = [fm, fm, fm2, fm2] if framework in ("tvrl", "tvrl_te") else [fm] if framework == "mae" else [fm, fm2]
    assert len(temporal) == len(views)
    for mask, valid in zip(temporal, views):  # padded frames hidden (masked ones may be too), the temporal CLS seen
        assert mask.shape == (B, 1, 1, 1 + T) and mask[:, 0, 0, 0].all() and not mask[:, 0, 0, 1:][~valid].any()
    if framework in ("tvrl", "tvrl_te"):
        # prediction branches: exactly the padding masks
        assert torch.equal(temporal[1], key_padding_mask(fm)) and torch.equal(temporal[3], key_padding_mask(fm2))
    elif framework == "mae":
        assert torch.equal(temporal[0], key_padding_mask(fm))
        valid = torch.cat([fm, fm.repeat_interleave(m.decoder.num_patches, dim=1)], dim=1)
        assert all(torch.equal(d, key_padding_mask(valid)) for d in rec.calls["decoder"])
    else:
        assert torch.equal(temporal[0], key_padding_mask(fm)) and torch.equal(temporal[1], key_padding_mask(fm2))


def test_padded_frames_do_not_change_the_loss():
    m = _method("csimclr").eval()
    x, x2 = _views()
    fm = torch.ones(B, T, dtype=torch.bool)
    fm[0, :2] = False
    with torch.no_grad():
        loss = m(x, x2, frame_mask=fm)["loss"]
        y = x.clone()
        y[0, :, :2] = torch.rand_like(y[0, :, :2])  # other pixels in the padding only
        torch.testing.assert_close(m(y, x2, frame_mask=fm)["loss"], loss)
        assert not torch.allclose(m(y, x2)["loss"], loss)  # unmasked, the same frames count


def _item(valid: list[bool], valid_2: list[bool]) -> dict:
    return {
        "image": torch.zeros(1, T, 2, 2, dtype=torch.uint8),
        "image_2": torch.zeros(1, T, 2, 2, dtype=torch.uint8),
        "times": torch.arange(float(T)),
        "frame_mask": torch.tensor(valid),
        "frame_mask_2": torch.tensor(valid_2),
    }


def test_collate_leaves_out_the_masks_of_unpadded_views():
    full, padded = [True] * T, [False] + [True] * (T - 1)
    out = drop_unpadded_masks_collate([_item(full, full), _item(full, padded)])
    assert "frame_mask" not in out and torch.equal(out["frame_mask_2"], torch.tensor([full, padded]))
    assert out["image"].shape == (2, 1, T, 2, 2) and out["times"].shape == (2, T)
    _, _, _, kw = TwoViewPrepareBatch()(out, "cpu")
    assert "frame_mask" not in kw and torch.equal(kw["frame_mask_2"], out["frame_mask_2"])

    kept = drop_unpadded_masks_collate([_item(padded, padded), _item(full, full)])
    assert torch.equal(kept["frame_mask"], torch.tensor([padded, full]))  # any padded clip keeps the batch's mask
    assert "frame_mask_2" in kept
    plain = drop_unpadded_masks_collate([{"image": torch.ones(2)}, {"image": torch.ones(2)}])  # no masks: as MONAI
    assert list(plain) == ["image"] and plain["image"].shape == (2, 2)


def test_bundle_step_without_padding_masks_only_the_masked_frames():
    """The bundle's loader drops the masks of its unpadded synthetic clips; the step attends without them."""
    from medssl_monai.benchmarking import _start, _step, _template_batch, build_trainer

    parser, trainer = build_trainer(
        ROOT / "bundles" / "tvrl_echo_ssl_pretraining", sizes="small", device="cpu", overrides={"num_workers": 0}
    )
    batch = _template_batch(parser)
    assert "image_2" in batch and "frame_mask" not in batch and "frame_mask_2" not in batch
    rec = _Recorder(trainer.network)
    _start(trainer)
    _step(trainer, batch)
    temporal = rec.calls["temporal"]
    assert len(temporal) == 4 and all(mask is None for mask in rec.calls["frame"])
    assert temporal[0] is not None and temporal[2] is not None  # tvrl v2: frames masked for prediction hidden
    assert temporal[1] is None and temporal[3] is None  # the prediction branches: no padding, no mask
