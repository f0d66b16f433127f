"""Fixtures for the baseline tests: the neuron tests' tiny real UNet and seeded text table (neuron_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "neurons"))  # neuron_fixtures: shared test helpers


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: steadier and faster on the shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
