"""No host-device sync in the training steps: the guard itself, every bundle's step, and the sync-free rewrites.

Each rewrite (gathers instead of boolean indexing, counts from shapes instead of mask reads) is checked against
the previous implementation, kept here as the reference: same loss and same gradients on a fixed batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from medssl_monai.benchmarking import step_host_syncs, training_bundles
from medssl_monai.engines.sync_guard import HostSyncError, no_host_sync
from medssl_monai.losses.contrastive import negative_cosine_similarity, nt_xent
from medssl_monai.losses.ucl import mixed_negative
from medssl_monai.methods import discovr as discovr_module
from medssl_monai.methods import ucl as ucl_module
from medssl_monai.methods.discovr import DISCOVR, VideoMAE, patchify_clip, standardize_tokens
from medssl_monai.methods.ucl import UCL
from medssl_monai.networks.videovit import VideoMAEDecoder, VideoViT, visible_tokens
from medssl_monai.transforms.tube_masking import num_visible_tokens, tube_mask

ROOT = Path(__file__).resolve().parents[2]
KW = {"img_size": 16, "num_frames": 4, "patch_size": 8, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1}
KW["num_heads"] = 2

#: syncs allowed per bundle, by source file (none left in the bundles' default steps); anything else fails
KNOWN_SYNCS: dict[str, tuple[str, ...]] = {}


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# ---------------------------------------------------------------- the guard


def test_guard_raises_on_host_reads_and_shape_from_value_ops():
    x = torch.arange(6.0)
    mask = x > 2
    syncing = [
        lambda: x.sum().item(),
        lambda: bool(x.sum() > 0),
        lambda: int(x.max()),
        lambda: x[mask],
        lambda: x.clone().index_put_((mask,), torch.tensor(0.0)),
        lambda: torch.nonzero(mask),
        lambda: x.tolist(),
        lambda: x.cpu(),
        lambda: x.numpy(),
        lambda: torch.unique(x),
        lambda: torch.repeat_interleave(torch.tensor([1, 2])),
    ]
    for fn in syncing:
        with pytest.raises(HostSyncError), no_host_sync():
            fn()
    with no_host_sync() as guard:  # the sync-free forms of the same work
        torch.where(mask, x, 0.0).sum()
        x.gather(0, torch.tensor([3, 4, 5]))
        torch.argsort(mask.to(torch.uint8), stable=True)
        x.masked_fill(mask, 0.0)
        torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([2, 1]), output_size=3)
    assert guard.syncs == []
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # the patched methods are restored


def test_guard_records_without_raising_and_allows_named_sources():
    with no_host_sync(raise_on_sync=False) as guard:
        torch.ones(2).sum().item()
    assert len(guard.syncs) == 1 and guard.syncs[0].where.startswith(__file__) and not guard.syncs[0].allowed
    with no_host_sync(allow=(Path(__file__).name,)) as guard:
        torch.ones(2).sum().item()
    assert guard.syncs[0].allowed


def test_guard_sees_syncs_in_backward():
    w = torch.ones(4, requires_grad=True)
    mask = torch.tensor([True, False, True, False])
    loss = (w * 2)[mask].sum()  # forward outside the guard; its backward scatters through the boolean mask
    with pytest.raises(HostSyncError), no_host_sync():
        loss.backward()


# ---------------------------------------------------------------- every bundle's step


@pytest.mark.parametrize("bundle", [b.name for b in training_bundles(ROOT / "bundles")])
def test_training_step_has_no_host_sync(bundle, monkeypatch):
    """One ``train#trainer`` iteration (tiny sizes, handlers included, loss logging off) reads nothing on the host.

    Reads of host tensors by design (the device augmentation's draws, MONAI DiceLoss's axis list) are allowed;
    the GPU check is ``torch.cuda.set_sync_debug_mode("error")`` (docs/performance.md).
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    syncs = step_host_syncs(ROOT / "bundles" / bundle, sizes="small", device="cpu")
    known = KNOWN_SYNCS.get(bundle, ())
    bad = [s for s in syncs if not s.allowed and not any(k in s.where for k in known)]
    assert bad == [], "\n".join(f"{s.op} at {s.where}" for s in bad)


def test_unilvseg_step_with_the_bound_term_has_no_host_sync(monkeypatch):
    """The untraced-frame bound (whole-clip prediction, erosion and dilation of the mask, the voxel count) adds no
    host read to UniLVSeg's step."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from medssl_monai.losses.temporal_bounds import TemporalBoundLoss

    calls = []
    forward = TemporalBoundLoss.forward
    monkeypatch.setattr(TemporalBoundLoss, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    bundle = ROOT / "bundles" / "unilvseg_echo_lv_segmentation"
    syncs = step_host_syncs(bundle, sizes="small", device="cpu", overrides={"bound_weight": 0.5})
    assert calls  # the bound term ran in the step
    known = KNOWN_SYNCS.get(bundle.name, ())
    bad = [s for s in syncs if not s.allowed and not any(k in s.where for k in known)]
    assert bad == [], "\n".join(f"{s.op} at {s.where}" for s in bad)


def test_ucl_pocus_training_step_has_no_host_sync(monkeypatch):
    """The POCUS preset's step (its resized crop and flip on the device) reads only its host-side draws."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    bundle = ROOT / "bundles" / "ucl_us_classification"
    pocus = yaml.safe_load((bundle / "configs" / "pocus.yaml").read_text())
    # the synthetic data has no fold column: the preset's given folds off, 2 folds, a small batch
    pocus.update({"fold_key": None, "extra_columns": [], "num_folds": 2, "batch_size": 4})
    from medssl_monai.transforms.device import FrameResizedCropDeviceAugmentation

    calls = []
    apply = FrameResizedCropDeviceAugmentation.apply
    monkeypatch.setattr(
        FrameResizedCropDeviceAugmentation, "apply", lambda self, *a, **k: calls.append(1) or apply(self, *a, **k)
    )
    syncs = step_host_syncs(bundle, sizes="small", device="cpu", overrides=pocus)
    assert calls  # the device augmentation ran in the step
    bad = [s for s in syncs if not s.allowed]
    assert bad == [], "\n".join(f"{s.op} at {s.where}" for s in bad)


# ---------------------------------------------------------------- sync-free rewrites match the previous code


def test_visible_tokens_gather_matches_boolean_indexing():
    torch.manual_seed(0)
    grid = (2, 3, 3)
    mask = tube_mask(4, grid, 0.6)
    n_vis = num_visible_tokens(grid, 0.6)
    assert n_vis == int((~mask[0]).sum())
    x = torch.randn(4, 18, 5, requires_grad=True)
    w = torch.randn(4, n_vis, 5)
    new = visible_tokens(x, mask, n_vis)
    (gnew,) = torch.autograd.grad((new * w).sum(), x)
    old = x[~mask].reshape(4, -1, 5)  # the previous implementation
    (gold,) = torch.autograd.grad((old * w).sum(), x)
    assert torch.equal(new, old) and torch.equal(gnew, gold)


def _old_decoder_forward(dec: VideoMAEDecoder, visible: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    vis = dec.encoder_to_decoder(visible)
    b, n = mask.shape
    full = dec.mask_token.to(vis.dtype).expand(b, n, -1).clone()
    full[~mask] = vis.reshape(-1, vis.shape[-1])
    full = full + dec.pos_embed.to(vis.dtype)
    for blk in dec.blocks:
        full = blk(full)
    return dec.head(dec.norm(full))


def test_decoder_scatter_matches_boolean_index_put():
    torch.manual_seed(0)
    dec = VideoMAEDecoder(num_patches=8, encoder_dim=6, decoder_dim=8, depth=1, num_heads=2, out_channels=5)
    mask = tube_mask(3, (2, 2, 2), 0.5, torch.Generator().manual_seed(1))
    visible = torch.randn(3, 4, 6, requires_grad=True)
    target = torch.randn(3, 8, 5)
    out = {}
    for name, fn in (("new", dec), ("old", lambda v, m: _old_decoder_forward(dec, v, m))):
        dec.zero_grad()
        visible.grad = None
        pred = fn(visible, mask)
        F.mse_loss(pred, target).backward()
        out[name] = (pred.detach(), {**_grads(dec), "visible": visible.grad.clone()})
    torch.testing.assert_close(out["new"][0], out["old"][0])
    _assert_same_grads(out["new"][1], out["old"][1])


def _discovr() -> DISCOVR:
    torch.manual_seed(0)
    small = {"decoder_dim": 8, "decoder_depth": 1, "decoder_num_heads": 2, "dino_out_dim": 32, "dino_hidden_dim": 16}
    small |= {"dino_bottleneck_dim": 8, "num_prototypes": 6, "num_local_views": 2, "num_image_views": 2}
    return DISCOVR(VideoViT(**KW), global_mask_ratio=0.5, local_mask_ratio=0.5, image_mask_ratio=0.5, **small)


def test_discovr_loss_and_grads_match_boolean_indexing(monkeypatch):
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    results = {}
    for name in ("new", "old"):
        if name == "old":  # no counts: the encoders fall back to boolean indexing (the previous code path)
            monkeypatch.setattr(discovr_module, "num_visible_tokens", lambda *a, **k: None)
        m = _discovr()
        torch.manual_seed(7)  # the same masks
        out = m(x)
        out["loss"].backward()
        results[name] = ({k: v.detach() for k, v in out.items()}, _grads(m))
    for k in results["new"][0]:
        torch.testing.assert_close(results["new"][0][k], results["old"][0][k], msg=k)
    _assert_same_grads(results["new"][1], results["old"][1])


def test_videomae_loss_and_grads_match_boolean_indexing():
    torch.manual_seed(0)
    m = VideoMAE(VideoViT(**KW), decoder_dim=8, decoder_depth=1, decoder_num_heads=2, mask_ratio=0.5)
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)
    new = m(x)["loss"]
    new.backward()
    g_new = _grads(m)
    m.zero_grad()
    torch.manual_seed(7)  # the previous forward, with boolean indexing throughout
    b = x.shape[0]
    mask = tube_mask(b, m.encoder.grid_size, m.mask_ratio, None, x.device)
    enc = m.encoder.encode(m.encoder.tokens(x), mask)
    pred = m.decoder(enc[:, 1:], mask)[mask].reshape(b, -1, m.patch_dim)
    patches = standardize_tokens(patchify_clip(x.float(), m.encoder.tubelet_size, m.encoder.patch_size), dim=-2)
    old = F.mse_loss(pred.float(), patches.flatten(2)[mask].reshape(b, -1, m.patch_dim))
    old.backward()
    torch.testing.assert_close(new, old)
    _assert_same_grads(g_new, _grads(m))


def test_mixed_negative_count_from_shapes_matches_mask_count():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    bank = F.normalize(torch.randn(6, 4), dim=1)
    exclude = (torch.arange(6) // 2)[None, :] == torch.arange(3)[:, None]  # each query owns 2 rows
    new = mixed_negative(q, bank, support_size=8, temperature=0.1, exclude=exclude, num_eligible=4)
    (g_new,) = torch.autograd.grad(new.sum(), q)
    old = mixed_negative(q, bank, support_size=8, temperature=0.1, exclude=exclude)  # counts from the mask
    (g_old,) = torch.autograd.grad(old.sum(), q)
    assert torch.equal(new, old) and torch.equal(g_new, g_old)
    with pytest.raises(ValueError, match="no cross-video negatives"):
        mixed_negative(q, bank, exclude=torch.ones(3, 6, dtype=torch.bool), num_eligible=0)


def test_ucl_step_matches_mask_counting(monkeypatch):
    class Enc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(12, 6)
            self.out_features = 6

        def forward(self, x):
            return self.fc(x.flatten(1))

    frames = torch.randn(3, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    results = {}
    original = ucl_module.mixed_negative
    for name in ("new", "old"):
        if name == "old":  # the count read from the mask, as before
            monkeypatch.setattr(ucl_module, "mixed_negative", lambda *a, num_eligible=None, **k: original(*a, **k))
        torch.manual_seed(0)
        m = UCL(Enc(), out_dim=4, support_size=2, warmup_epochs=0)
        out = m(frames)
        out["loss"].backward()
        results[name] = (out["loss"].detach(), _grads(m))
    torch.testing.assert_close(results["new"][0], results["old"][0])
    _assert_same_grads(results["new"][1], results["old"][1])


def _old_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    n = z0.shape[0]
    labels = torch.arange(n)
    self_mask = F.one_hot(labels, n).bool()
    l00 = (z0 @ z0.T / temperature).masked_fill(self_mask, float("-inf"))
    l11 = (z1 @ z1.T / temperature).masked_fill(self_mask, float("-inf"))
    logits = torch.cat([torch.cat([z0 @ z1.T / temperature, l00], 1), torch.cat([z1 @ z0.T / temperature, l11], 1)])
    return F.cross_entropy(logits, torch.cat([labels, labels]))


def test_nt_xent_and_masked_cosine_match_the_previous_code():
    torch.manual_seed(0)
    z0, z1 = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    new = nt_xent(z0, z1, 0.1)
    g_new = torch.autograd.grad(new, (z0, z1))
    old = _old_nt_xent(z0, z1, 0.1)
    g_old = torch.autograd.grad(old, (z0, z1))
    torch.testing.assert_close(new, old)
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b)

    pred, target = torch.randn(3, 4, 6, requires_grad=True), torch.randn(3, 4, 6)
    some = torch.rand(3, 4, generator=torch.Generator().manual_seed(1)) < 0.5
    for mask in (some, torch.zeros(3, 4, dtype=torch.bool)):
        new = negative_cosine_similarity(pred, target, mask)
        (g_new,) = torch.autograd.grad(new, pred)
        # the previous code: mean over cos[mask]; 0 (connected to the graph) for an empty mask
        cos = F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
        old = -cos[mask].mean() if mask.any() else pred.sum() * 0.0
        (g_old,) = torch.autograd.grad(old, pred)
        torch.testing.assert_close(new, old)
        torch.testing.assert_close(g_new, g_old)


def test_local_view_masks_in_one_draw_match_the_loop_over_views():
    from medssl_monai.transforms.tube_masking import multi_local_tube_masks

    grid = (2, 4, 4)
    glob, local = multi_local_tube_masks(3, grid, 0.75, 0.5, 4, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the previous code: the global mask, then one draw per view
    old_glob = tube_mask(3, grid, 0.75, gen)
    old_local = torch.stack([tube_mask(3, grid, 0.5, gen) for _ in range(4)])
    assert torch.equal(glob, old_glob) and torch.equal(local, old_local)


def test_ema_update_copies_buffers_like_the_loop():
    from medssl_monai.engines.ssl import ema_update

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Linear(4, 4))

    torch.manual_seed(0)
    student, teacher = net(), net()
    student.train()(torch.randn(4, 2, 6, 6))  # moves the running statistics and num_batches_tracked (int64)
    reference = net()
    reference.load_state_dict(teacher.state_dict())
    ema_update(teacher, student, 0.9)
    with torch.no_grad():  # the previous code: foreach EMA of the parameters, then one copy per buffer
        for pr, ps in zip(reference.parameters(), student.parameters()):
            pr.mul_(0.9).add_(ps, alpha=0.1)
        for br, bs in zip(reference.buffers(), student.buffers()):
            br.copy_(bs)
    for (k, a), b in zip(teacher.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
