"""Cost of discovery and of per-sample masked generation (`cones bench discovery`, `cones bench generate`).

- `bench_discovery`: one Cones score step (forward, backward w.r.t. K/V only,
  θ·∂L/∂θ accumulation) vs one plain fine-tuning step of the same K/V weights
  (forward, backward, AdamW), interleaved on the same UNet and batch.
- `bench_generate`: images/s for B subject combinations denoised as one batch
  with per-sample masks, the same batch unmasked, and the B combinations one
  at a time. Masks act through the Cones attention processor with each call's
  ConceptBatch in cross_attention_kwargs, as in a stock pipeline; unmasked is
  the UNet's own processors, nothing attached.

Random weights and random text embeddings: cost depends on shapes, not values.
Timings are the minimum over interleaved repeats (timeit's convention): on a
shared machine other processes only ever add time, and interleaving exposes
every mode to the same load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cones_lab.baselines.lora import lora_adapter
from cones_tasks.neurons.discovery import DiscoveryProblem, frozen_unet, initial_loss_scale
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.processor import KWARG, ConceptBatch, attached
from cones_tasks.neurons.noising import noised_batch
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_scope import mask_effects, stack_row_edits
from cones_tasks.toyworld.architecture import build_unet
from cones_tasks.toyworld.tokenizer import MAX_LENGTH

__all__ = ["Preset", "bench_discovery", "bench_generate", "preset_unet"]

Preset = Literal["tiny", "toy", "sd15"]


def preset_unet(preset: Preset, *, seed: int = 0) -> tuple[nn.Module, int]:
    """A randomly initialised UNet of a known shape and its text length T.

    tiny: the tests' UNet (8 px). toy: the shipped toy model's architecture (16 px,
    cones_tasks.toyworld). sd15: Stable Diffusion 1.5's published UNet config
    (64×64×4 latents, channels 320/640/1280/1280, cross_attention_dim 768) — GPU-sized.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if preset == "tiny":
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
        )
        return unet, 4
    if preset == "toy":
        return build_unet(seed=seed), MAX_LENGTH
    if preset == "sd15":
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        )
        return unet, 77
    raise ValueError(f"unknown preset {preset!r}; choose tiny, toy or sd15")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _inputs(unet: nn.Module, batch: int, tokens: int, gen: torch.Generator):
    cfg = unet.config
    size = cfg.sample_size[0] if isinstance(cfg.sample_size, (tuple, list)) else cfg.sample_size
    x0 = torch.randn(batch, cfg.in_channels, size, size, generator=gen)
    text = torch.randn(batch, tokens, cfg.cross_attention_dim, generator=gen)
    return x0, text


def bench_discovery(unet: nn.Module, *, tokens: int, batch: int = 4, repeats: int = 5, warmup: int = 1,
                    seed: int = 0, profile: int = 0, lora_rank: int = 4) -> dict:
    """Seconds (min over repeats) of one Cones score step vs one K/V fine-tuning step, interleaved (same UNet, same batch).

    Also one LoRA step (rank `lora_rank` on the same K/V projections, peft's adapter, AdamW; the
    baseline of cones_lab.baselines.lora): the adapter is put in and taken out around each timed
    step, with one untimed step first so the timed one is a steady-state step (AdamW's state exists).

    `profile` > 0 adds each step's top operators by self time (device time on a GPU) under torch.profiler, so a
    gap between the two steps can be traced to its operators (the H100's 10 ms, docs/research/gpu-h100.md)."""
    from diffusers import DDPMScheduler

    first = next(unet.parameters())
    device, dtype = first.device, first.dtype
    gen = torch.Generator().manual_seed(seed)
    x0, text = _inputs(unet, batch, tokens, gen)
    x0, cond = x0.to(device), text[:1].to(device, dtype)
    space = NeuronSpace.from_unet(unet)
    modules = space.modules(unet)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    problem = DiscoveryProblem(unet, space, scheduler, x0, None, 0.0, cond,
                               {e.name: modules[e.name].weight.detach().float() for e in space.entries}, dtype, device, batch,
                               loss_scale=initial_loss_scale(dtype))
    sums = {e.name: torch.zeros(e.shape, dtype=torch.float32, device=device) for e in space.entries}
    kv = [modules[e.name].weight for e in space.entries]
    optimizer = torch.optim.AdamW(kv, lr=1e-5)

    def cones_step() -> None:
        problem.score_step(None, None, sums, 0.0, gen)

    def training_step(opt: torch.optim.Optimizer):
        """One denoising-loss step of `opt`'s parameters: what both baselines time (dense K/V, LoRA)."""

        def step() -> None:
            b = noised_batch(scheduler, x0, generator=gen)
            pred = unet(b.noisy.to(dtype), b.timesteps, encoder_hidden_states=cond.expand(batch, -1, -1)).sample
            F.mse_loss(pred.float(), b.target.float()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    finetune_step = training_step(optimizer)

    def lora_timed() -> float:
        with lora_adapter(unet, space, rank=lora_rank, seed=seed) as factors:
            lora_step = training_step(torch.optim.AdamW([t for pair in factors.values() for t in pair], lr=1e-4))

            lora_step()
            return _timed(lora_step, device)

    cones, tune, lora = [], [], []
    with frozen_unet(unet):
        for i in range(warmup + repeats):
            tc = _timed(cones_step, device)
            with _trainable(kv):  # the fine-tuning baseline trains exactly the K/V weights Cones scores
                tf = _timed(finetune_step, device)
            tl = lora_timed()
            if i >= warmup:
                cones.append(tc)
                tune.append(tf)
                lora.append(tl)
        top = None
        if profile:
            top = {"cones": _top_operators(cones_step, device, profile)}
            with _trainable(kv):
                top["finetune"] = _top_operators(finetune_step, device, profile)
    c, f, lo = min(cones), min(tune), min(lora)
    return {"cones_step_s": c, "finetune_step_s": f, "ratio": c / f, "lora_step_s": lo, "ratio_to_lora": c / lo,
            "lora_rank": lora_rank, "batch": batch, "repeats": repeats,
            "neurons": space.size, "device": str(device), "dtype": str(dtype).removeprefix("torch.")} | (
        {"top_operators_ms_per_step": top} if top else {})


@contextmanager
def _trainable(params: list[torch.Tensor]):
    """`params` require grad inside the block only (the UNet is otherwise frozen for both steps)."""
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)


def _top_operators(step: Callable[[], object], device: torch.device, n: int, *, steps: int = 3) -> list[tuple[str, float, int]]:
    """(operator, self ms per step, calls per step) of the `n` costliest operators over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []), acc_events=True) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:n]
    return [(e.key, round(getattr(e, key) / 1000 / steps, 3), e.count // steps) for e in rows]


def _random_masks(space: NeuronSpace, count: int, density: float, seed: int) -> list[ConceptMask]:
    rng = np.random.default_rng(seed)
    n = max(1, int(density * space.size))
    return [ConceptMask.from_indices(space, rng.choice(space.size, n, replace=False)) for _ in range(count)]


def bench_generate(unet: nn.Module, *, tokens: int, combinations: int = 8, steps: int = 2, density: float = 0.01,
                   guidance_scale: float = 7.5, repeats: int = 5, seed: int = 0, composition: str | None = None) -> dict:
    """Images/s: B combinations with per-sample masks in one batch vs unmasked vs one at a time.

    Each image is a classifier-free-guided DDIM denoise of `steps` steps (batch doubled to
    [uncond..., cond...], so the ConceptBatch's i % B mapping gives both halves of prompt j mask j).
    """
    from diffusers import DDIMScheduler

    first = next(unet.parameters())
    device, dtype = first.device, first.dtype
    gen = torch.Generator().manual_seed(seed)
    x_t, text = _inputs(unet, combinations, tokens, gen)
    x_t, text = x_t.to(device, dtype), text.to(device, dtype)
    uncond = torch.zeros_like(text)
    space = NeuronSpace.from_unet(unet)
    masks = _random_masks(space, combinations, density, seed)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)

    @torch.inference_mode()
    def denoise(latents: torch.Tensor, cond: torch.Tensor, concepts: ConceptBatch | None = None) -> torch.Tensor:
        both = torch.cat([uncond[: len(cond)], cond])
        kwargs = None if concepts is None else {KWARG: concepts}  # one batch for every step, as a pipeline call
        for t in scheduler.timesteps:
            eps_u, eps_c = unet(torch.cat([latents, latents]), t, encoder_hidden_states=both,
                                cross_attention_kwargs=kwargs).sample.chunk(2)
            latents = scheduler.step(eps_u + guidance_scale * (eps_c - eps_u), t, latents).prev_sample
        return latents

    def masked() -> None:
        with attached(unet):
            denoise(x_t, text, ConceptBatch(space, masks))

    def unmasked() -> None:
        denoise(x_t, text)

    def sequential() -> None:
        with attached(unet):
            for i, mask in enumerate(masks):
                denoise(x_t[i : i + 1], text[i : i + 1], ConceptBatch(space, [mask]))

    kinds = {"masked": masked, "unmasked": unmasked, "sequential": sequential}
    if composition is not None:
        kinds.update(_composition_runs(unet, space, denoise, x_t, text, combinations, density, seed, composition))
    runs: dict[str, list[float]] = {name: [] for name in kinds}
    masked(), unmasked()  # warm-up (allocator, kernels)
    for name in kinds:
        if name.startswith("pair_"):
            kinds[name]()
    for _ in range(repeats):  # interleaved: load on a shared machine hits every kind alike
        for name, fn in kinds.items():
            runs[name].append(_timed(fn, device))
    ips = {name: combinations / min(ts) for name, ts in runs.items()}
    out = {"masked_batch_ips": ips["masked"], "unmasked_batch_ips": ips["unmasked"], "sequential_ips": ips["sequential"],
           "masked_over_unmasked": ips["masked"] / ips["unmasked"], "combinations": combinations, "steps": steps,
           "density": density, "neurons": space.size, "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    if composition is not None:
        # side by side in one run: two subjects per image, composed by `composition` vs by the paper's union
        out.update({"composition": composition, "composition_ips": ips[f"pair_{composition}"],
                    "union_ips": ips["pair_union"], "ratio_to_union": ips["pair_union"] / ips[f"pair_{composition}"]})
    return out


def _composition_runs(unet, space, denoise, x_t, text, combinations, density, seed, composition) -> dict[str, Callable[[], None]]:
    """Two-subject batches composed as the paper's union and as `composition`, for `ratio_to_union`.

    Token composition's per-batch work is included in its timing: building each subject's row
    edit from its mask (word_scope.mask_effects) and adding it at rows 2 and 5 of each prompt.
    """
    if composition not in ("union", "token"):
        raise ValueError(f"unknown composition {composition!r}; choose union or token")
    pairs = [_random_masks(space, 2, density, seed + 1 + i) for i in range(combinations)]
    unions = [a.union(b) for a, b in pairs]
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(combinations, 2, text.shape[-1], generator=gen).to(text.device)  # each subject's word state [D]

    def union() -> None:
        with attached(unet):
            denoise(x_t, text, ConceptBatch(space, unions))

    def token() -> None:
        # subject j of combination i at row (2, 5)[j] of the conditional half, as word_row_edits stacks them
        mentions = [
            (combinations + i, ((2, 5)[j],), mask_effects(unet, space, mask, states[i, j : j + 1]))
            for i, masks in enumerate(pairs) for j, mask in enumerate(masks)
        ]
        edits = stack_row_edits(space, mentions, device=text.device, batch_size=2 * combinations)
        with attached(unet):
            denoise(x_t, text, ConceptBatch(space, [None], edits))

    runs = {"pair_union": union}
    if composition == "token":
        runs["pair_token"] = token
    return runs
