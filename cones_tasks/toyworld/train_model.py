"""Train the toy text-to-image model from scratch (docs/research/toy-model.md): `cones toy train-model`.

Seeded: AdamW with warm-up and cosine decay, EMA weights (what ships). Writes the diffusers
folder layout, a loss curve PNG and a training log. Runs on CPU or a GPU. By default each step's
batch is seeded by (seed, step) alone and may be rendered by DataLoader workers, so the data a run
sees does not depend on the number of workers; the first model's in-order stream is kept for
its replay (training_batches).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cones_tasks.toyworld.architecture import build_scheduler, build_text_encoder, build_unet
from cones_tasks.pixels import to_model_range
from cones_tasks.toyworld.batches import OBJECT_COUNT_WEIGHTS, random_batch
from cones_tasks.toyworld.render import CROWD_RADIUS, check_crowd_radius, check_object_order
from cones_tasks.toyworld.tokenizer import write_tokenizer
from cones_tasks.toyworld.training_batches import DATA_STREAMS, TrainingBatches, caption_ids, sequential_batches

TEXT_ENCODERS = ("random", "toy-clip")


@dataclass(frozen=True)
class TrainModelParams:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    ema_decay: float = 0.995
    p_empty: float = 0.1  # caption dropout, for classifier-free guidance
    seed: int = 0
    max_minutes: float | None = None  # stop early (and still ship) past this wall time
    checkpoint_every: int = 250
    # Continue a run cut short by `max_minutes` from its shipped (EMA) weights and log: the
    # learning-rate schedule resumes where it stopped; data and noise streams are re-seeded
    # from (seed, steps done), so a resumed run is as reproducible as an uninterrupted one.
    resume: bool = False
    # Stop (and ship) after this many steps of the schedule: with `resume`, replays a run that was
    # cut by `max_minutes` at a step no clock can repeat (the log's "segments" say where).
    stop_at: int | None = None
    # "random": a frozen random CLIPTextModel (architecture.build_text_encoder); "toy-clip": the
    # toy CLIP's text tower, frozen (clip_text_encoder) — contextual token states, as SD's.
    text_encoder: str = "random"
    device: str = "cpu"
    workers: int = 0  # DataLoader processes rendering batches; 0 renders in the training process
    data_stream: str = "per-step"  # or "sequential", the first model's (training_batches)
    # Scenes' object-count mix, {count: weight}; None is batches.OBJECT_COUNT_WEIGHTS (55 % single
    # objects). A pair-heavy mix did nothing for two-object binding with random object order, and
    # added 0.085 to pairs over the same 1,520 steps with left-to-right order (README, "Where the toy model stands").
    object_counts: dict[int, float] | None = None
    # Where a caption's objects sit: "random" cells, "reading" order (left/top first) or "left-to-right", which give
    # two-object binding a spatial anchor (README, "Object order"; render.place_objects).
    object_order: str = "random"
    # Half-size range (px) of three or four objects (render.CROWD_RADIUS). The shipped model's first four
    # segments (to the two-object model at 8,750 steps) trained on render.SMALL_CROWD_RADIUS, which their
    # replay lines pass; logs without the field mean that.
    crowd_radius: tuple[float, float] = CROWD_RADIUS

    def __post_init__(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"unknown text encoder {self.text_encoder!r}; choose one of {TEXT_ENCODERS}")
        if self.data_stream not in DATA_STREAMS:
            raise ValueError(f"unknown data stream {self.data_stream!r}; choose one of {DATA_STREAMS}")
        if self.object_counts is not None and (
            not set(self.object_counts) <= {1, 2, 3, 4} or min(self.object_counts.values()) < 0
            or abs(sum(self.object_counts.values()) - 1) > 1e-6
        ):
            raise ValueError(f"object_counts {self.object_counts} must map counts 1–4 to weights ≥ 0 that sum to 1")
        check_object_order(self.object_order)  # here too: a typo fails before the run builds anything
        check_crowd_radius(self.crowd_radius)
        if self.data_stream == "sequential" and self.workers:
            raise ValueError("the sequential data stream is drawn in order by one process: pass workers=0, "
                             "or use the per-step stream to render batches in workers")


def write_pipeline(out: Path, unet, text_encoder, scheduler) -> None:
    """Diffusers folder layout: model_index.json + one folder per component, safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    _drop_local_path(out / "unet" / "config.json")  # a resumed UNet remembers where it was loaded from
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    write_tokenizer(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    import diffusers

    index = {
        "_class_name": "ConesPixelPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", type(scheduler).__name__],
        "vae": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def _drop_local_path(config: Path) -> None:
    data = json.loads(config.read_text())
    if data.pop("_name_or_path", None) is not None:
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def parse_object_counts(text: str) -> dict[int, float]:
    """A scene mix from the command line: "1:0.2,2:0.3,3:0.25,4:0.25", or JSON '{"1": 0.2, …}' (the Makefile's older lines)."""
    try:
        if text.lstrip().startswith("{"):
            return {int(k): float(v) for k, v in json.loads(text).items()}
        return {int(k): float(v) for k, v in (part.split(":") for part in text.split(","))}
    except ValueError as error:
        raise ValueError(f"object counts {text!r} do not parse ({error}): write count:weight pairs, "
                         f"e.g. 1:0.2,2:0.3,3:0.25,4:0.25") from None


def parse_crowd_radius(text: str) -> tuple[float, float]:
    """ "3.0,3.5" → (3.0, 3.5)."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"crowd radius {text!r} does not parse: write low,high in px, e.g. 3.0,3.5") from None
    return lo, hi


@torch.no_grad()
def caption_gap(unet, encode, scheduler, *, seed: int, n: int = 256, crowd_radius: tuple[float, float] = CROWD_RADIUS) -> float:
    """Relative increase of the denoising error with a wrong caption vs the right one.

    ~0 means the model ignores its prompt (the failure the toy model's first runs started from; docs/research/toy-model.md)."""
    rng = np.random.default_rng(seed)
    images, captions = random_batch(rng, n, p_full=1.0, crowd_radius=crowd_radius)
    x0 = to_model_range(images)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(100, 700, (n,), generator=g)
    device = next(unet.parameters()).device
    xt, noise, t = scheduler.add_noise(x0, noise, t).to(device), noise.to(device), t.to(device)
    right = F.mse_loss(unet(xt, t, encode(captions)).sample, noise).item()
    wrong = F.mse_loss(unet(xt, t, encode(captions[1:] + captions[:1])).sample, noise).item()
    return (wrong - right) / right


def _text_encoder(params: TrainModelParams):
    if params.text_encoder == "toy-clip":  # only this option needs the toy CLIP's weights and its converter
        from cones_tasks.toyworld.assets import toy_clip_weights
        from cones_tasks.toyworld.clip_text_encoder import text_encoder_from_toy_clip

        return text_encoder_from_toy_clip(toy_clip_weights())
    return build_text_encoder(seed=params.seed + 1)


def _on_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself on CPU; a CPU copy otherwise (the training copy stays on its device)."""
    return module if next(module.parameters()).device.type == "cpu" else copy.deepcopy(module).cpu()


def _replay_params(params: TrainModelParams) -> dict:
    """What a segment's replay needs (README: `make toy-model`), without the run's bookkeeping."""
    kept = {k: v for k, v in asdict(params).items() if k not in ("max_minutes", "checkpoint_every", "resume", "stop_at", "workers")}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kept.items()}  # as the JSON log reads back


def _batches(params: TrainModelParams, first_step: int, last: int, num_train_timesteps: int):
    mix = {"p_empty": params.p_empty, "object_counts": params.object_counts or OBJECT_COUNT_WEIGHTS,
           "object_order": params.object_order, "crowd_radius": params.crowd_radius}
    if params.data_stream == "sequential":
        return sequential_batches(params.seed, first_step, last - first_step, params.batch_size, num_train_timesteps, **mix)
    batches = TrainingBatches(params.seed, params.batch_size, num_train_timesteps, **mix)
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(first_step, last),
                                       num_workers=params.workers, prefetch_factor=8 if params.workers else None)


def train_toy_model(out: str | Path, params: TrainModelParams = TrainModelParams(), *, progress: bool = True) -> dict:
    threads = torch.get_num_threads()
    if torch.device(params.device).type == "cuda":
        # On a GPU this process only feeds the card. Torch's default of one CPU thread per core,
        # in each training process beside the render workers, oversubscribed the CPUs: 3.3 steps/s
        # at batch 512 on an H100, ~10 at batch 128 with one thread, where two runs side by side
        # kept ~10 each, so a run is bound by its own launch overhead (docs/research/gpu-h100.md).
        torch.set_num_threads(1)
    try:
        return _train(Path(out), params, progress)
    finally:
        torch.set_num_threads(threads)


def _train(out: Path, params: TrainModelParams, progress: bool) -> dict:
    first_step, losses, gaps, elapsed, segments = 0, [], [], 0.0, []
    torch.manual_seed(params.seed)
    scheduler = build_scheduler()
    if not params.resume:
        unet, text_encoder = build_unet(seed=params.seed), _text_encoder(params)
    else:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        previous = json.loads((out / "training_log.json").read_text())
        first_step, losses, elapsed = previous["steps_done"], previous["losses"], previous["wall_s"]
        if first_step >= params.steps:
            raise ValueError(f"{out} already holds {first_step} steps; pass more --steps than that to resume")
        gaps = [tuple(g) for g in previous["caption_gap"]]
        segments = previous.get("segments", [[0, first_step]])
        unet = UNet2DConditionModel.from_pretrained(out / "unet")
        text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder").requires_grad_(False).eval()
    write_tokenizer(out / "tokenizer")
    device = torch.device(params.device)
    unet, text_encoder = unet.to(device), text_encoder.to(device)

    def encode(ids: torch.Tensor) -> torch.Tensor:
        return text_encoder(ids).last_hidden_state  # [B, T, D]

    def encode_captions(captions: list[str]) -> torch.Tensor:
        return encode(caption_ids(captions).to(device))

    ema = copy.deepcopy(unet).requires_grad_(False)
    text_encoder_to_ship = _on_cpu(text_encoder)  # frozen: one copy serves every checkpoint
    opt = torch.optim.AdamW(unet.parameters(), lr=params.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt,
        # s counts this process's steps: the cosine resumes at first_step, the warm-up restarts
        lambda s: min(1.0, (s + 1) / params.warmup)
        * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s + first_step, params.steps) / params.steps))),
    )
    start = time.perf_counter() - elapsed
    last = params.steps if params.stop_at is None else min(params.stop_at, params.steps)
    if last <= first_step:
        raise ValueError(f"stop_at={params.stop_at} is not past the {first_step} steps already done")
    loader = _batches(params, first_step, last, scheduler.config.num_train_timesteps)
    ema_params, unet_params = list(ema.parameters()), list(unet.parameters())
    bar = tqdm(zip(range(first_step, last), loader), total=last - first_step, desc="train toy model", disable=not progress)
    for step, (images, ids, noise, t) in bar:
        # uint8 to the device, then scaled there: a quarter of the bytes through the host
        x0, ids, noise, t = to_model_range(images.to(device)), ids.to(device), noise.to(device), t.to(device)
        with torch.no_grad():
            cond = encode(ids)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t, cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        schedule.step()
        with torch.no_grad():
            decay = min(params.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, unet_params, 1 - decay)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1 == last
        over_time = params.max_minutes is not None and time.perf_counter() - start - elapsed > 60 * params.max_minutes
        if (step + 1) % params.checkpoint_every == 0 or done or over_time:
            gaps.append((step + 1, caption_gap(ema, encode_captions, scheduler, seed=10_000, crowd_radius=params.crowd_radius)))
            write_pipeline(out, _on_cpu(ema), text_encoder_to_ship, scheduler)
            log = {
                "params": asdict(params),
                "steps_done": step + 1,
                "wall_s": time.perf_counter() - start,
                "threads": torch.get_num_threads(),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "final_loss_ema50": float(np.mean(losses[-50:])),
                "caption_gap": gaps,
                # [first, last] step of each process: replay with --steps/--resume/--stop-at (README)
                # with what each segment ran: a warm restart changes `steps`, a GPU run the batch,
                # a later schedule the scene mix (the params above are only the last segment's)
                "segments": [*segments, [first_step, step + 1, _replay_params(params)]],
                "losses": losses,
            }
            (out / "training_log.json").write_text(json.dumps(log))
            plot_loss_curve(losses, gaps, out / "loss_curve.png")
            bar.write(f"step {step + 1}: loss {log['final_loss_ema50']:.4f}, caption gap {gaps[-1][1]:.3f}")
        if over_time:
            break
    return log


def plot_loss_curve(losses: list[float], gaps: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    smooth = np.convolve(losses, np.ones(25) / 25, mode="valid") if len(losses) >= 25 else losses
    a.plot(losses, alpha=0.3, lw=0.6)
    a.plot(np.arange(len(smooth)) + (len(losses) - len(smooth)), smooth)
    a.set(xlabel="step", ylabel="noise MSE", title="training loss", yscale="log")
    if gaps:
        b.plot(*zip(*gaps), marker="o")
    b.set(xlabel="step", ylabel="(wrong − right) / right", title="caption gap")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
