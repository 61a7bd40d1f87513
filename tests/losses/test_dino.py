"""DINO head, teacher-temperature schedule, loss and centre on hand-computed values."""

from __future__ import annotations

import math

import torch

from medssl_monai.losses.dino import DINOHead, DINOLoss, teacher_temperature


def test_teacher_temperature_warmup():
    assert teacher_temperature(0) == 0.04
    assert abs(teacher_temperature(29) - 0.07) < 1e-12
    assert abs(teacher_temperature(10) - (0.04 + 0.03 * 10 / 29)) < 1e-12  # np.linspace(0.04, 0.07, 30)[10]
    assert teacher_temperature(500) == 0.07  # no index error past the reference's 400-entry table


def test_head_last_layer_is_unit_norm():
    head = DINOHead(8, out_dim=5, hidden_dim=16, bottleneck_dim=4)
    head.last_layer_v.data.mul_(7.0)  # scaling the direction changes nothing: the gain is fixed at 1
    x = torch.randn(3, 8)
    out = head(x)
    assert out.shape == (3, 5)
    assert out.abs().max() <= 1.0 + 1e-6  # unit vectors dotted with unit prototypes


def test_loss_and_center():
    loss_fn = DINOLoss(2, student_temp=1.0, warmup_teacher_temp=1.0, teacher_temp=1.0, center_momentum=0.5)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax -> [0.75, 0.25]
    student = torch.zeros(2, 1, 2)  # two views, uniform: log p = log 0.5
    loss = loss_fn(student, teacher, epoch=0)
    assert abs(loss.item() - math.log(2.0)) < 1e-6
    torch.testing.assert_close(loss_fn.center, torch.tensor([[0.5 * math.log(3.0), 0.0]]))
    loss_fn.eval()
    loss_fn(student, teacher)
    torch.testing.assert_close(loss_fn.center, torch.tensor([[0.5 * math.log(3.0), 0.0]]))  # no update in eval


def test_center_update_logits_by_default_probs_as_reference_switch():
    # default: DINO's centre, an EMA of the raw teacher logits (checked above); "probs": the DISCOVR reference
    # averages softmax((t - c) / tau_t) instead
    assert DINOLoss(2).center_update == "logits"
    ref = DINOLoss(
        2, student_temp=1.0, warmup_teacher_temp=1.0, teacher_temp=1.0, center_momentum=0.5, center_update="probs"
    )
    ref(torch.zeros(1, 1, 2), torch.tensor([[math.log(3.0), 0.0]]))
    torch.testing.assert_close(ref.center, torch.tensor([[0.375, 0.125]]))  # 0.5 * [0.75, 0.25]


def test_head_logits_and_loss_are_float32_under_bf16_autocast():
    # the teacher divides the logits by 0.04: bf16 logits would move its softmax
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=32, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
        loss = DINOLoss(32)(out[None], head(x + 0.1))
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
