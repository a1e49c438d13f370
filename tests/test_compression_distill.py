"""Knowledge-distillation loss: zero at identity, hand-computed value, gradient, masking, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.distill import freeze_teacher, kd_loss, teacher_logits


def logits_and_labels(seed: int = 0, shape: tuple[int, ...] = (3, 5), classes: int = 7):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, classes, generator=g)
    teacher = torch.randn(*shape, classes, generator=g) * 2
    labels = torch.randint(0, classes, shape, generator=g)
    labels[0, 3:] = -100
    labels[2, 0] = -100
    return student, teacher, labels


def explicit_kd(student, teacher, labels, temperature, alpha, ignore_index=-100):
    """The formula written out: mean over real positions of alpha T^2 KL(p_t || p_s) + (1 - alpha) CE."""
    real = labels != ignore_index
    s, t, y = student[real], teacher[real], labels[real]
    p_t = torch.softmax(t / temperature, -1)
    kl = (p_t * (torch.log(p_t) - torch.log(torch.softmax(s / temperature, -1)))).sum(-1)
    ce = -torch.log(torch.softmax(s, -1)).gather(1, y[:, None]).squeeze(1)
    return (alpha * temperature**2 * kl + (1 - alpha) * ce).mean()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_zero_when_student_equals_teacher_at_alpha_one(temperature: float) -> None:
    student, _, labels = logits_and_labels()
    loss = kd_loss(student, student.clone(), labels, temperature=temperature, alpha=1.0)
    assert abs(loss.item()) < 1e-6


def test_hand_computed_value() -> None:
    student = torch.tensor([[[1.0, 0.0, -1.0], [5.0, 5.0, 5.0]]])  # second position is padding
    teacher = torch.tensor([[[0.0, 2.0, 0.0], [9.0, -9.0, 0.0]]])
    labels = torch.tensor([[1, -100]])
    T, alpha = 2.0, 0.3

    def softmax(v):
        z = sum(math.exp(x) for x in v)
        return [math.exp(x) / z for x in v]

    p_t, p_s = softmax([0.0, 1.0, 0.0]), softmax([0.5, 0.0, -0.5])
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))
    ce = -math.log(softmax([1.0, 0.0, -1.0])[1])
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert kd_loss(student, teacher, labels, T, alpha).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature,alpha", [(1.0, 1.0), (2.0, 0.5), (3.0, 0.0)])
def test_gradient_matches_autograd_of_formula(temperature: float, alpha: float) -> None:
    student, teacher, labels = logits_and_labels(1)
    a = student.clone().double().requires_grad_()
    b = student.clone().double().requires_grad_()
    loss = kd_loss(a, teacher.double(), labels, temperature, alpha)
    ref = explicit_kd(b, teacher.double(), labels, temperature, alpha)
    torch.testing.assert_close(loss.double(), ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert not a.grad[0, 3:].any() and not a.grad[2, 0].any()  # ignored positions get no gradient


def test_ignored_positions_do_not_matter() -> None:
    student, teacher, labels = logits_and_labels(2)
    loss = kd_loss(student, teacher, labels, 2.0, 0.5)
    changed_s, changed_t = student.clone(), teacher.clone()
    changed_s[0, 3:] += 100.0
    changed_t[2, 0] = -changed_t[2, 0]
    assert kd_loss(changed_s, changed_t, labels, 2.0, 0.5).item() == pytest.approx(loss.item(), rel=1e-6)
    real = labels != -100
    flat = kd_loss(student[real][None], teacher[real][None], labels[real][None], 2.0, 0.5)
    assert flat.item() == pytest.approx(loss.item(), rel=1e-6)
    # NMT: padding id as ignore_index
    nmt_labels = labels.clamp(min=0)
    nmt_labels[labels == -100] = 0
    assert kd_loss(student, teacher, nmt_labels, 2.0, 0.5, ignore_index=0).item() == pytest.approx(
        explicit_kd(student, teacher, nmt_labels, 2.0, 0.5, ignore_index=0).item(), rel=1e-5)


def test_alpha_zero_is_cross_entropy_and_no_real_positions_is_zero() -> None:
    student, teacher, labels = logits_and_labels(3)
    expected = F.cross_entropy(student.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert kd_loss(student, teacher, labels, 2.0, 0.0).item() == pytest.approx(expected.item(), rel=1e-6)
    s = student.clone().requires_grad_()
    empty = kd_loss(s, teacher, torch.full_like(labels, -100), 2.0, 0.5)
    empty.backward()
    assert empty.item() == 0.0 and not s.grad.any()


def test_bad_inputs_give_clear_errors() -> None:
    student, teacher, labels = logits_and_labels()
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            kd_loss(student, teacher, labels, temperature=temperature)
    with pytest.raises(ValueError, match="alpha must be in"):
        kd_loss(student, teacher, labels, alpha=1.5)
    with pytest.raises(ValueError, match="student has 7 output classes but teacher has 9.*same label set"):
        kd_loss(student, torch.randn(3, 5, 9), labels)
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(student, teacher[:, :4], labels)
    with pytest.raises(ValueError, match=r"labels \(3, 4\) must match"):
        kd_loss(student, teacher, labels[:, :4])


def test_teacher_frozen_and_no_grad() -> None:
    teacher = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    teacher.train()
    out = teacher_logits(teacher, torch.randn(2, 4))
    assert not out.requires_grad and teacher.training  # eval for the call, mode restored
    freeze_teacher(teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
