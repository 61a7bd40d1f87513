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
