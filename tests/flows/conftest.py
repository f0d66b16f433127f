"""Real Prefect for flow tests: one temporary API server per test session (~10 s to start)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect test harness; PREFECT_API_URL is also exported so Dask worker processes report to it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls offline
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    previous = os.environ.get("PREFECT_API_URL")
    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        try:
            yield PREFECT_API_URL.value()
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The toy architecture with random weights, saved in diffusers layout (what load_diffusion_model reads)."""
    from cones_tasks.toyworld.architecture import build_scheduler, build_text_encoder, build_unet
    from cones_tasks.toyworld.train_model import write_pipeline

    out = tmp_path_factory.mktemp("tiny-model")
    write_pipeline(out, build_unet(seed=0), build_text_encoder(seed=0), build_scheduler())
    return out
