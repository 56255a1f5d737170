"""Per-step schedules of the DINO family (facebookresearch/dino ``utils.cosine_scheduler``,
main_dino.py).

* learning rate: linear warm-up from ``warmup_start`` to ``base`` over the warm-up steps, then a half-cosine to ``final``;
* weight decay: cosine 0.04 -> 0.4 (no warm-up);
* teacher EMA momentum: cosine 0.996 -> 1;
* teacher temperature: linear 0.04 -> 0.07 over the first 30 *epochs*, then constant.

The values are computed for one step at a time (no precomputed arrays), so a resumed run gets exactly the value
an uninterrupted run would have had.
"""
from __future__ import annotations

import math


def _check_step(step: int, total_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got total_steps={total_steps}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, total_steps={total_steps}), got step={step}")


def cosine_with_warmup(step: int, total_steps: int, base: float, final: float,
                       warmup_steps: int = 0, warmup_start: float = 0.0) -> float:
    """Value at ``step`` of DINO's ``cosine_scheduler``: ``linspace(warmup_start, base, warmup_steps)`` for the
    warm-up, then ``final + 0.5 (base - final)(1 + cos(pi i / n))`` with i the step after warm-up and n the number
    of post-warm-up steps."""
    _check_step(step, total_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got warmup_steps={warmup_steps}")
    if step < warmup_steps:
        if warmup_steps == 1:
            return float(warmup_start)
        return float(warmup_start + (base - warmup_start) * step / (warmup_steps - 1))
    i, n = step - warmup_steps, total_steps - warmup_steps
    return float(final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * i / n)))


def dino_weight_decay(step: int, total_steps: int, start: float = 0.04, end: float = 0.4) -> float:
    """DINO's weight-decay schedule: cosine from 0.04 to 0.4 (``--weight_decay`` / ``--weight_decay_end``)."""
    return cosine_with_warmup(step, total_steps, start, end)


def teacher_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """EMA momentum of the teacher, increased to 1 with a cosine (DINO ``--momentum_teacher``; MoCo v3
    ``--moco-m-cos``)."""
    return cosine_with_warmup(step, total_steps, base, final)


def teacher_temperature(epoch: int, warmup_epochs: int = 30, start: float = 0.04, end: float = 0.07) -> float:
    """DINO's teacher temperature: ``linspace(start, end, warmup_epochs)[epoch]`` during warm-up, ``end`` after."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got epoch={epoch}")
    if epoch >= warmup_epochs:
        return float(end)
    if warmup_epochs == 1:
        return float(start)
    return float(start + (end - start) * epoch / (warmup_epochs - 1))
