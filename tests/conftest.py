"""Fixtures every test folder may use."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs `-n auto`) each worker is a process of its own: one torch thread
    each, so two workers on two cores run side by side instead of four threads taking turns."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on the shared 2-core machine torch tests run ~5x faster and steadier."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
