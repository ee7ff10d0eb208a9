"""Shared by every tier (imports only pytest and torch, so tier 1 stays ComfyUI-free)."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny ops, where thread hand-offs cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
