"""Fixtures several test modules share."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: bit-identical results are promised for one thread count
    (docs/guarantees.md), so a comparison must not depend on OMP_NUM_THREADS or on how many cores the machine has;
    tiny tensors gain nothing from more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
