"""Knowledge distillation loss (Hinton et al. 2015), token level, padding excluded.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

Both terms are averaged over the real positions (labels != ignore_index): NER sub-tokens
labelled -100 and NMT padding (ignore_index = pad id) contribute nothing. The T^2 factor
keeps the soft-target gradients on the same scale as the hard ones when T changes. The
teacher logits are treated as constants (detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_kd_inputs(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> None:
    """One clear error if teacher and student disagree on the label set / vocabulary or shapes."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student has {student_logits.shape[-1]} output classes but teacher has "
            f"{teacher_logits.shape[-1]}: teacher and student must share the same label set / vocabulary"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must match the logits' leading dims "
                         f"{tuple(student_logits.shape[:-1])}")


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 2.0,
    alpha: float = 0.5, ignore_index: int = -100, label_smoothing: float = 0.0,
) -> Tensor:
    """Distillation loss over (..., C) logits and (...) labels, mean over real positions.

    alpha = 1 is pure distillation, alpha = 0 plain cross-entropy (with optional label
    smoothing). Returns a zero (still differentiable) scalar when no position is real.
    """
    if not temperature > 0:
        raise ValueError(f"KD temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"KD alpha must be in [0, 1], got {alpha}")
    check_kd_inputs(student_logits, teacher_logits, labels)
    real = labels != ignore_index
    if not bool(real.any()):
        return student_logits.sum() * 0.0
    student = student_logits[real].float()
    teacher = teacher_logits[real].detach().float()
    loss = student.new_zeros(())
    if alpha > 0:
        log_p_student = F.log_softmax(student / temperature, dim=-1)
        log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum") / student.shape[0]
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        ce = F.cross_entropy(student, labels[real], label_smoothing=label_smoothing)
        loss = loss + (1 - alpha) * ce
    return loss


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put the teacher in eval mode with gradients off (dropout off, no optimizer state)."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def teacher_logits(teacher: nn.Module, *inputs, **kwargs) -> Tensor:
    """Teacher logits without gradients, in eval mode (restored afterwards)."""
    was_training = teacher.training
    teacher.eval()
    try:
        return teacher(*inputs, **kwargs)
    finally:
        teacher.train(was_training)


def hidden_state_loss(states: list[Tensor], teacher_states: list[Tensor], attention_mask: Tensor) -> Tensor:
    """Mean over student layers l = 1..L_s of the MSE, over real tokens, between the student's layer-l
    hidden state and the teacher's layer round(l * L_t / L_s) (TinyBERT-style alignment).

    `states` / `teacher_states` are [embeddings, layer 1, ..., layer L] lists of (B, T, d) tensors
    (`BertModel(..., all_hidden_states=True)`); the teacher's are treated as constants.
    """
    ls, lt = len(states) - 1, len(teacher_states) - 1
    if states[-1].shape[-1] != teacher_states[-1].shape[-1]:
        raise ValueError(f"hidden-state alignment needs equal hidden sizes, student {states[-1].shape[-1]} "
                         f"vs teacher {teacher_states[-1].shape[-1]}")
    real = attention_mask.bool()
    pairs = [(states[layer], teacher_states[round(layer * lt / ls)].detach()) for layer in range(1, ls + 1)]
    return sum(F.mse_loss(s[real].float(), t[real].float()) for s, t in pairs) / ls  # fp32 under autocast

