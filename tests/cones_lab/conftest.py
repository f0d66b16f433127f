"""Fixtures for the lab's tests: the neuron tests' tiny real UNet and seeded text table (neuron_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cones_tasks" / "neurons"))  # neuron_fixtures: shared test helpers


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """Every module here runs on one intra-op thread (tests/conftest.py)."""
