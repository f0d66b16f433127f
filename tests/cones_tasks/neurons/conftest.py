"""Fixtures for the neuron tests (helpers live in neuron_fixtures.py so tests can import them)."""

from __future__ import annotations

import pytest
from neuron_fixtures import tiny_unet
from diffusers import UNet2DConditionModel


@pytest.fixture
def unet() -> UNet2DConditionModel:
    return tiny_unet(0)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Every module here runs on one intra-op thread (tests/conftest.py)."""
