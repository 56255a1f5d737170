"""LGFFEM (Nuñez-Fernández et al. 2025) protocol as the paper / the ffnir public code states it (issue 16)."""
import pytest

from histokit.papers import get_recipe


def test_full_recipe_epochs_per_strategy_are_sec_4_1_3():
    # "Strategy A used a batch size of 64 for 60 epochs, while strategies B and C ... 300 epochs" (B was 60 before).
    full = {t.name: t for t in get_recipe("lgffem", "full").pretrain}
    assert full["lgffem_A"].epochs == 60
    assert full["lgffem_B"].epochs == 300
    assert full["lgffem_C"].epochs == 300
    assert all(t.batch_size == 64 for t in full.values())
