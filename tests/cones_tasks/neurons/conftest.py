"""Fixtures for the neuron tests (helpers live in neuron_fixtures.py so tests can import them)."""

from __future__ import annotations

import pytest
from neuron_fixtures import tiny_unet
from diffusers import UNet2DConditionModel


@pytest.fixture
def unet() -> UNet2DConditionModel:
    return tiny_unet(0)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on the shared 2-core machine this runs these tests ~5x faster and steadier."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
