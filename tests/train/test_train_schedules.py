"""Schedules against DINO's ``utils.cosine_scheduler`` (re-written here from its definition) and its teacher
temperature array."""
import numpy as np
import pytest

from histokit.train.schedules import cosine_with_warmup, dino_weight_decay, teacher_momentum, teacher_temperature


def dino_cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    warmup = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup = np.linspace(start_warmup_value, base, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, schedule))


@pytest.mark.parametrize("warmup_epochs", [0, 1, 3])
def test_lr_schedule_matches_dino_array(warmup_epochs):
    epochs, niter = 10, 7
    ref = dino_cosine_scheduler(5e-4, 1e-6, epochs, niter, warmup_epochs)
    ours = [cosine_with_warmup(s, epochs * niter, 5e-4, 1e-6, warmup_epochs * niter) for s in range(epochs * niter)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_weight_decay_and_momentum_schedules():
    total = 50
    np.testing.assert_allclose([dino_weight_decay(s, total) for s in range(total)],
                               dino_cosine_scheduler(0.04, 0.4, 10, 5), rtol=1e-12)
    np.testing.assert_allclose([teacher_momentum(s, total) for s in range(total)],
                               dino_cosine_scheduler(0.996, 1.0, 10, 5), rtol=1e-12)
    assert teacher_momentum(0, total) == pytest.approx(0.996)
    assert teacher_momentum(total - 1, total) > 0.9999


def test_teacher_temperature_warmup_then_constant():
    ref = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07))  # main_dino.py DINOLoss
    np.testing.assert_allclose([teacher_temperature(e) for e in range(100)], ref, rtol=1e-12)
    assert teacher_temperature(5, warmup_epochs=0) == 0.07


def test_bad_steps_are_rejected_with_the_parameter_name():
    with pytest.raises(ValueError, match="step"):
        cosine_with_warmup(10, 10, 1.0, 0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_with_warmup(0, 10, 1.0, 0.0, warmup_steps=11)
    with pytest.raises(ValueError, match="epoch"):
        teacher_temperature(-1)
