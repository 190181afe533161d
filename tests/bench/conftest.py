import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Bench tests run torch on 1 thread (and restore the setting): on a shared, loaded machine several
    threads per op wait on each other and tiny-model calls slow down by orders of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(before)
