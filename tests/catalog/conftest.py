"""Catalog fixtures: one contract suite over file://, memory:// and s3:// (moto on loopback)."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from catalog import load_catalog


@pytest.fixture(scope="session")
def space():
    """A real NeuronSpace of a tiny diffusers UNet (cross-attention K/V)."""
    import torch
    from diffusers import UNet2DConditionModel

    from cones_tasks.neurons.space import NeuronSpace

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )
    return NeuronSpace.from_unet(unet)


@pytest.fixture
def make_mask(space):
    from cones_tasks.neurons.masks import ConceptMask

    def make(seed: int, fraction: float = 0.05):
        rng = np.random.default_rng(seed)
        return ConceptMask.from_indices(space, np.flatnonzero(rng.random(space.size) < fraction))

    return make


@pytest.fixture(scope="session")
def moto_endpoint():
    """A local S3-compatible server (moto) on 127.0.0.1; skipped if moto is missing."""
    server_mod = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _s3_options(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}


@pytest.fixture
def s3_options(moto_endpoint):
    """storage_options for s3fs against the moto server (credentials moto accepts)."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return _s3_options(moto_endpoint)


@pytest.fixture(params=["file", "memory", pytest.param("s3", marks=pytest.mark.slow)])
def catalog(request, tmp_path):
    """An empty catalog on each backend, opened by URI exactly as a user would."""
    if request.param == "file":
        yield load_catalog(f"file://{tmp_path}/catalog")
    elif request.param == "memory":
        yield load_catalog(f"memory://cat-{uuid.uuid4().hex}")
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        import s3fs

        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        bucket = f"cones-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**_s3_options(endpoint)).mkdir(bucket)
        yield load_catalog(f"s3://{bucket}/catalog", **_s3_options(endpoint))
