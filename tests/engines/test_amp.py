"""The loss scaler follows the autocast dtype: none active under bf16 (no scale, no inf check, no host read), fp16 kept.

MONAI's ``Trainer.run`` makes ``torch.cuda.amp.GradScaler()`` whenever ``amp`` is on; on a machine without CUDA
that scaler disables itself, so the CPU stand-in for the GPU's enabled scaler is ``torch.amp.GradScaler("cpu")``
(the same ``step``: a ``found_inf`` read with ``.item()`` for an optimizer without fused AMP support).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from medssl_monai.benchmarking import training_bundles
from medssl_monai.engines.amp import GradScalerHandler, autocast_dtype, grad_scaler, needs_grad_scaler
from medssl_monai.engines.sync_guard import no_host_sync

ROOT = Path(__file__).resolve().parents[2]

# MONAI autocasts on "cuda" also on a CPU (a warning, then no autocast); MONAI's scaler warns that CUDA is missing
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def test_scaler_only_for_float16():
    assert autocast_dtype(None) == torch.float16  # torch.autocast("cuda")'s default
    assert autocast_dtype({"dtype": torch.bfloat16}) == torch.bfloat16
    assert autocast_dtype({"dtype": "torch.bfloat16"}) == autocast_dtype({"dtype": "bfloat16"}) == torch.bfloat16
    with pytest.raises(ValueError, match="torch dtype"):
        autocast_dtype({"dtype": "bf16"})
    assert needs_grad_scaler(True, {"dtype": torch.float16}) and needs_grad_scaler(True, {})
    assert not needs_grad_scaler(True, {"dtype": torch.bfloat16}) and not needs_grad_scaler(False, {})
    assert grad_scaler(False, {"dtype": torch.float16}) is None
    off = grad_scaler(True, {"dtype": torch.bfloat16})
    assert isinstance(off, torch.amp.GradScaler) and not off.is_enabled()


def _trainer(dtype: torch.dtype, handlers: list | None = None, fused: bool = False) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    batch = {"image": torch.randn(4, 3), "label": torch.randn(4, 2)}
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[batch],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, fused=fused),
        loss_function=torch.nn.MSELoss(),
        amp=True,
        amp_kwargs={"dtype": dtype},
        train_handlers=handlers,
        decollate=False,  # as the bundles (decollating reads values on the host)
    )


def test_bf16_run_has_no_active_scaler_and_steps_like_a_plain_optimizer():
    trainer = _trainer(torch.bfloat16, [GradScalerHandler()])
    net = trainer.network
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(net.state_dict())
    batch = trainer.data_loader[0]
    trainer.run()
    scaler = trainer.scaler
    assert type(scaler) is torch.amp.GradScaler and not scaler.is_enabled()  # ours, not MONAI's

    # a plain step on the same loss (on a CPU MONAI's CUDA autocast is inactive: both sides run in fp32)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(reference(batch["image"]), batch["label"]).backward()
    opt.step()
    for a, b in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fp16_keeps_monai_scaler():
    trainer = _trainer(torch.float16, [GradScalerHandler()])
    trainer.run()
    assert type(trainer.scaler) is torch.cuda.amp.GradScaler  # the one Trainer.run made, left in place

    kept = torch.amp.GradScaler("cpu")
    trainer.scaler = kept
    GradScalerHandler()(trainer)
    assert trainer.scaler is kept
    trainer.scaler = None  # a step driven without run() (the benchmark): a scaler is made
    GradScalerHandler()(trainer)
    assert isinstance(trainer.scaler, torch.amp.GradScaler)


def test_handler_attaches_once_and_leaves_amp_off_alone():
    trainer = _trainer(torch.bfloat16)
    handler = GradScalerHandler()
    handler.attach(trainer)
    handler.attach(trainer)
    assert sum(h[0] is handler for h in trainer._event_handlers[Events.STARTED]) == 1
    trainer.amp = False
    handler(trainer)
    assert trainer.scaler is None  # as MONAI: no AMP, no scaler


def _guarded_iteration(trainer: SupervisedTrainer) -> list:
    trainer.state.iteration, trainer.state.epoch_length = 1, 1
    with no_host_sync(raise_on_sync=False) as guard:
        trainer._iteration(trainer, trainer.data_loader[0])
    return guard.syncs


def test_bf16_step_reads_nothing_on_the_host():
    trainer = _trainer(torch.bfloat16)
    trainer.scaler = torch.amp.GradScaler("cpu")  # what Trainer.run makes on a GPU: enabled
    syncs = _guarded_iteration(trainer)
    assert [s.op for s in syncs] == ["aten._local_scalar_dense.default"]  # scaler.step's found_inf.item()
    assert "monai/engines/trainer.py" in syncs[0].where

    GradScalerHandler()(trainer)  # what STARTED does in a bundle
    assert not trainer.scaler.is_enabled()
    assert _guarded_iteration(trainer) == []


def test_fused_optimizer_takes_the_inf_check_without_a_host_read():
    """With fused optimizers (the bundles' default on a GPU) even an enabled scaler does not read on the host."""
    trainer = _trainer(torch.float16, fused=True)
    trainer.scaler = torch.amp.GradScaler("cpu")
    assert _guarded_iteration(trainer) == []


@pytest.mark.parametrize("bundle", [b.name for b in training_bundles(ROOT / "bundles")])
def test_every_bundle_trains_bf16_without_an_active_scaler(bundle):
    """Each train.yaml autocasts in bf16 (no scaler needed) and lists the handler among its trainer's handlers."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ROOT / "bundles" / bundle / "configs" / "train.yaml")
    assert parser["train#trainer#amp_kwargs"]["dtype"] == "$torch.bfloat16"
    targets = [h.get("_target_", "") for h in parser["train#handlers"] if isinstance(h, dict)]
    assert "medssl_monai.engines.amp.GradScalerHandler" in targets
