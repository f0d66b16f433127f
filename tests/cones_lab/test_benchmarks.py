"""The discovery and generation benchmarks run end to end on a tiny UNet and report consistent numbers."""

from __future__ import annotations

import json
import time

import torch
from typer.testing import CliRunner

from cones_lab.benchmarks import bench_discovery, bench_generate, preset_unet
from cones_tasks.neurons.space import NeuronSpace


def _forward_s(unet, tokens: int, batch: int) -> float:
    """The fastest of 5 plain forward passes of `batch` images, timed here: a floor under any step that runs one."""
    cfg = unet.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    text = torch.randn(batch, tokens, cfg.cross_attention_dim, generator=gen)
    t = torch.full((batch,), 500)
    times = []
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=text)  # warm-up
        for _ in range(5):
            start = time.perf_counter()
            unet(x, t, encoder_hidden_states=text)
            times.append(time.perf_counter() - start)
    return min(times)


def test_bench_discovery_times_both_steps_and_leaves_flags_alone():
    unet, tokens = preset_unet("tiny")
    forward = _forward_s(unet, tokens, 2)
    flags = [p.requires_grad for p in unet.parameters()]
    names = [name for name, _ in unet.named_parameters()]
    start = time.perf_counter()
    out = bench_discovery(unet, tokens=tokens, batch=2, repeats=2, warmup=0)
    wall = time.perf_counter() - start
    assert out["cones_step_s"] > 0 and out["finetune_step_s"] > 0 and out["lora_step_s"] > 0
    # The step times are real: two repeats of all three steps fit in the call's own wall time, measured here,
    # and each step (a forward and a backward) takes at least about one forward pass, timed independently
    # (half of it: both are minima on a shared machine).
    assert 2 * (out["cones_step_s"] + out["finetune_step_s"] + out["lora_step_s"]) <= wall
    assert min(out["cones_step_s"], out["finetune_step_s"], out["lora_step_s"]) >= 0.5 * forward, (out, forward)
    assert out["ratio"] == out["cones_step_s"] / out["finetune_step_s"]
    assert out["ratio_to_lora"] == out["cones_step_s"] / out["lora_step_s"]
    # the LoRA step's adapter is gone afterwards: same parameter names, plain nn.Linear K/V projections
    assert [name for name, _ in unet.named_parameters()] == names
    assert all(type(m) is torch.nn.Linear for m in NeuronSpace.from_unet(unet).modules(unet).values())
    assert out["neurons"] == NeuronSpace.from_unet(unet).size
    assert [p.requires_grad for p in unet.parameters()] == flags
    assert all(p.grad is None for p in unet.parameters())
    assert "top_operators_ms_per_step" not in out


def test_bench_discovery_profile_names_each_steps_costliest_operators():
    unet, tokens = preset_unet("tiny")
    flags = [p.requires_grad for p in unet.parameters()]
    top = bench_discovery(unet, tokens=tokens, batch=2, repeats=1, warmup=0, profile=4)["top_operators_ms_per_step"]
    assert set(top) == {"cones", "finetune"} and all(len(rows) == 4 for rows in top.values())
    for rows in top.values():
        assert [ms for _, ms, _ in rows] == sorted((ms for _, ms, _ in rows), reverse=True) and rows[0][1] > 0
    # a real trace of a training step: its backward shows among the costliest operators
    assert any("backward" in name for name, _, _ in top["finetune"])
    assert [p.requires_grad for p in unet.parameters()] == flags


def test_bench_generate_reports_three_rates():
    unet, tokens = preset_unet("tiny")
    forward = _forward_s(unet, tokens, 2 * 3)  # one guided step of 3 images: a batch of 6
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    start = time.perf_counter()
    out = bench_generate(unet, tokens=tokens, combinations=3, steps=1, repeats=2)
    wall = time.perf_counter() - start
    rates = [out[key] for key in ("masked_batch_ips", "unmasked_batch_ips", "sequential_ips")]
    assert all(rate > 0 for rate in rates)
    # Rates are images per second of real runs: 3 images per run, 2 timed runs of each kind, all inside the
    # call's wall time (an ips off by the batch or the step count would break this bound).
    assert sum(2 * 3 / rate for rate in rates) <= wall
    # ...and none is faster than the forward passes it needs: 3 images × 1 step cost at least one guided forward
    # of 6, timed independently above (half of it: both are minima on a shared machine).
    assert all(3 / rate >= 0.5 * forward for rate in rates), (rates, forward)
    assert out["masked_over_unmasked"] == out["masked_batch_ips"] / out["unmasked_batch_ips"]
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def test_cli_prints_json():
    from cones_cli.bench import app

    result = CliRunner().invoke(app, ["discovery", "--preset", "tiny", "--batch", "2", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["preset"] == "tiny" and data["batch"] == 2 and data["repeats"] == 1
    assert data["ratio"] == data["cones_step_s"] / data["finetune_step_s"] and data["cones_step_s"] > 0
    bad = CliRunner().invoke(app, ["generate", "--preset", "tiny", "--dtype", "float7", "--json"])
    assert bad.exit_code != 0 and "float7" in bad.output
