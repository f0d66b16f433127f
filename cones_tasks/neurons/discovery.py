"""Concept-neuron discovery: the Cones algorithm (ICML 2023, §3.1–3.2; docs/discovery.md).

For a subject with a few images and its class prompt ("a photo of a dog", no
rare token), the concept-implanting loss L is the ordinary diffusion loss of
the subject's images under the class prompt (plus, optionally, λ × the same
loss on the base model's own class images: prior preservation). Each K/V
weight θ gets the score s = θ·∂L/∂θ, averaged in fp32 over `steps` random
(image, t, ε) draws. Neurons whose score passes the threshold are shut. In the
iterative variant every round recomputes the scores with the neurons found so
far shut and adds new ones; the optional soft step θ ← θ − ρ·θ²·∂L/∂θ (the
unofficial implementation's) moves a per-weight multiplier between steps.

The caller's model is never written: weights enter the forward through
`torch.func.functional_call` overrides, and only the K/V copies need grads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from cones_tasks.ingest import fit_to_resolution
from cones_tasks.neurons.composed import compose_side_by_side, composed_prompts
from cones_tasks.neurons.layout_settings import Box, check_box, grid_boxes
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.noising import images_to_model_inputs, model_resolution, noised_batch, training_scheduler
from cones_tasks.neurons.objectives import DiscoveryParams, GateObjective, PromptScoreObjective
from cones_tasks.neurons.processor import attached
from cones_tasks.neurons.scores import round_budget, select_neurons
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_discovery import discover_at_word
from cones_tasks.sampling import sample

__all__ = [
    "DiscoveryParams", "DiscoveryProblem", "DiscoveryResult", "concept_loss", "discover_concept_neurons", "frozen_unet",
    "initial_loss_scale", "refine_union", "subject_loss", "text_conditions",
]


@dataclass(frozen=True)
class DiscoveryResult:
    mask: ConceptMask
    report: dict[str, Any]
    # Mean scores [space.size] of the last round (shut neurons: their score when they were chosen
    # is in earlier rounds; here they are 0 since θ = 0). Lets a caller re-threshold without re-running.
    scores: np.ndarray = field(repr=False)


def discover_concept_neurons(
    model,
    images: np.ndarray,
    class_prompt: str | Sequence[str],
    params: DiscoveryParams = GateObjective(),
    *,
    prior_images: np.ndarray | None = None,
    prior_prompt: str | None = None,
    class_word: str | None = None,
    boxes: Sequence[Box | None] | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> DiscoveryResult:
    """Find the neurons of the subject shown in `images` (uint8 [N, H, W, 3]).

    class_prompt: one prompt for every image, or one per image — context-matched ("a triangle on
    snow" for a reference on snow), which on the toy model kept the subject in context prompts
    far better (README, "Variants tried").
    model: anything with `.unet`, `.scheduler`, `.encode_prompts(list[str]) -> [B, T, D]`
    and optionally `.vae` (cones_tasks.loading.DiffusionModel). prior_images: the base
    model's own images for `class_prompt`, required when params.prior_weight > 0 (prompt scope); `prior_prompt`
    is the prompt they were sampled for, by default the one `class_prompt` (required with one
    prompt per image: the prior term must not borrow the first reference's context).
    Deterministic on CPU for a given seed (all randomness comes from one CPU generator;
    `generator`, if given, replaces it for the steps, while `seed` still fixes the report's eval draws).
    class_word: the subject's class word ("dog"), which every prompt must name; required by
    every objective but the paper's prompt scope, whose neurons act at that word's rows only.
    boxes: one per image, the subject's region (x0, y0, x1, y1 as fractions of the image) in a scene
    photo, None in a photo of the subject alone; where the objective's `layout` holds the class word
    while fit and gate learn the edit (cones_tasks.neurons.layout). Default: every photo alone.
    """
    word = not isinstance(params, PromptScoreObjective)  # fit and score at the word act at the class word's rows
    prior_weight = 0.0 if word else params.prior_weight
    if word and not class_word:
        raise ValueError(
            "scope 'word' shuts neurons at the class word's rows: pass class_word (e.g. 'dog', named in every class prompt)"
        )
    if prior_weight > 0 and prior_images is None:
        raise ValueError(
            "prior_weight > 0 needs prior_images: generate a few images of the class prompt with the base model "
            "(cones_tasks.sampling.sample) and pass them, or set prior_weight=0"
        )
    if prior_weight > 0 and prior_prompt is None and not isinstance(class_prompt, str):
        raise ValueError(
            "one class prompt per image and prior_weight > 0 need prior_prompt: the prompt the prior images were "
            "sampled for (e.g. 'a dog'), so the prior term is not conditioned on one reference's context"
        )
    boxes = _checked_boxes(boxes, len(images))
    started = time.perf_counter()
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    unet = model.unet
    space = NeuronSpace.from_unet(unet, attention=params.attention)
    mentions = None
    if word and params.composed:
        images, class_prompt, mentions, boxes = _with_composed(model, images, class_prompt, class_word, params.composed,
                                                               seed, boxes)
    problem = DiscoveryProblem.build(
        model, space, images, class_prompt, prior_images, prior_weight, params.batch_size, gen,
        prior_prompt=prior_prompt,
    )

    shut_flat = torch.zeros(space.size, dtype=torch.bool)
    bar = tqdm(total=params.steps * params.rounds, desc=f"discover {class_prompt!r}", disable=not progress)
    extra: dict[str, Any] = {}
    with frozen_unet(unet):
        if word:
            prompts = _prompts_for(class_prompt, len(problem.x0))
            with attached(unet):  # once for every step: the edits reach the K/V rows through the Cones processor
                mask, extra = discover_at_word(problem, model, space, params, class_word, prompts, gen, bar,
                                               mentions=mentions, boxes=boxes)
            bar.close()
            losses, rounds, mean_scores = extra.pop("loss_curve"), extra.pop("rounds"), torch.zeros(space.size)
            eval_before, eval_after = None, None  # the every-token eval loss does not apply to a word-scoped mask
        else:
            losses, rounds, mean_scores = _shut_in_rounds([problem], space, params, shut_flat, gen, bar)
            mask = ConceptMask.from_indices(space, np.flatnonzero(shut_flat.numpy()))
            eval_before = problem.eval_loss(None, draws=params.eval_draws, seed=seed)
            eval_after = problem.eval_loss(_split(space, shut_flat, problem.device), draws=params.eval_draws, seed=seed)

    report = {
        "class_prompt": class_prompt,
        "images": int(problem.x0.shape[0]),
        "neurons": mask.count,
        "fraction": mask.fraction,
        "space_size": space.size,
        "space_fingerprint": space.fingerprint,
        "attention": params.attention,
        "neurons_per_layer": space.counts_per_layer(mask.indices),
        "loss_curve": losses,
        "rounds": rounds,
        "eval_loss_unmasked": eval_before,
        "eval_loss_masked": eval_after,
        "prediction_type": problem.scheduler.config.prediction_type,
        "time_s": time.perf_counter() - started,
        "seed": seed,
        "params": params.model_dump(),
        "class_word": class_word,
        **extra,
    }
    return DiscoveryResult(mask=mask, report=report, scores=mean_scores.numpy())


# How composed references' other object is drawn: the base model's own sampler defaults (sampling.sample).
_COMPOSED_STEPS = 25
_COMPOSED_GUIDANCE = 3.0


def _checked_boxes(boxes: Sequence[Box | None] | None, n: int) -> list[Box | None]:
    if boxes is None:
        return [None] * n
    if len(boxes) != n:
        raise ValueError(f"got {n} images but {len(boxes)} boxes: give one per image (None for a photo of the subject alone)")
    out = []
    for i, box in enumerate(boxes):
        if box is not None:
            box = tuple(float(v) for v in box)
            check_box(box, f"the box of image {i}")
        out.append(box)
    return out


def _with_composed(model, images, class_prompt, class_word, per_reference: int, seed: int, boxes: list):
    """References plus composed two-object images (cones_tasks.neurons.composed), their prompts, mentions and boxes.

    Each reference i gets, beside it, an object the base model drew for reference i's own prompt
    (its own seed), on the right (the subject is the first mention, in the left half) and, with 2 per
    reference, on the left (the second mention, in the right half).
    """
    prompts = _prompts_for(class_prompt, len(images))
    if isinstance(class_prompt, str):
        prompts = prompts * len(images)
    size = model_resolution(model)
    refs = np.stack([fit_to_resolution(im, size) for im in images])
    others = sample(model, prompts, seeds=[seed * 1_000 + 900 + i for i in range(len(refs))], steps=_COMPOSED_STEPS,
                    guidance_scale=_COMPOSED_GUIDANCE)
    composed, composed_text, mentions, halves = [], [], [0] * len(refs), []
    for i, (ref, other, prompt) in enumerate(zip(refs, others, prompts)):
        doubled, _ = composed_prompts(prompt, class_word)
        sides = (0, 1) if per_reference == 2 else (i % 2,)
        for side in sides:
            composed.append(compose_side_by_side(ref, other) if side == 0 else compose_side_by_side(other, ref))
            composed_text.append(doubled)
            mentions.append(side)
            halves.append(grid_boxes(2)[side])
    return np.concatenate([refs, np.stack(composed)]), prompts + composed_text, mentions, boxes + halves


def subject_loss(
    model, images: np.ndarray, class_prompt: str, *, mask: ConceptMask | None = None, draws: int = 16, seed: int = 0
) -> float:
    """The concept loss of `images` under `class_prompt` on fixed (t, ε) draws per image, optionally with `mask` shut.

    Same draws for every mask at one seed, so differences between masks are not sampling noise.
    """
    attention = "cross"
    if mask is not None:  # the mask says which space it lives in only through its fingerprint: try each kind
        for kind in ("cross", "self", "both"):
            if NeuronSpace.from_unet(model.unet, attention=kind).fingerprint == mask.space_fingerprint:
                attention = kind
                break
    space = NeuronSpace.from_unet(model.unet, attention=attention)
    if mask is not None:
        mask.check(space)
    problem = DiscoveryProblem.build(model, space, images, class_prompt, None, 0.0, _EVAL_CHUNK, torch.Generator().manual_seed(seed))
    shut_flat = torch.zeros(space.size, dtype=torch.bool)
    if mask is not None:
        shut_flat[torch.from_numpy(mask.indices.copy())] = True
    loss = problem.eval_loss(_split(space, shut_flat, problem.device), draws=draws, seed=seed)
    assert loss is not None
    return loss


def refine_union(
    model,
    subjects: Sequence[tuple[np.ndarray, str]],
    union: ConceptMask,
    params: PromptScoreObjective = PromptScoreObjective(rounds=3, steps=10, batch_size=4, threshold_value=0.002),
    *,
    seed: int = 0,
    progress: bool = True,
) -> DiscoveryResult:
    """A few more discovery rounds for a multi-subject union (Cones §3.3: a few fine-tuning steps for multi-subject generation).

    Each subject's neurons were found alone, so shutting the union can undo what one subject's
    neurons did for another (they share K/V rows). Starting from `union` shut, every step sums
    each subject's concept loss under its own class prompt; the neurons whose shutting lowers
    that joint loss are added. `params.threshold_value` budgets the *added* neurons. The result
    is still int indices (a superset of `union`), so storage stays sparse (Cones §3.3).

    subjects: (uint8 images [N, H, W, 3], class prompt or one prompt per image) per subject of the union.
    """
    if len(subjects) < 2:
        raise ValueError("refine_union needs at least 2 subjects; for one subject use discover_concept_neurons")
    if not isinstance(params, PromptScoreObjective):
        raise ValueError("refine_union refines the paper's every-token union: pass PromptScoreObjective params (objective "
                         "'score', scope 'prompt')")
    if params.prior_weight > 0:
        raise ValueError("refine_union does not take a prior-preservation term; set prior_weight=0")
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    space = NeuronSpace.from_unet(model.unet, attention=params.attention)
    union.check(space)
    problems = [DiscoveryProblem.build(model, space, images, prompt, None, 0.0, params.batch_size, gen) for images, prompt in subjects]
    shut_flat = torch.zeros(space.size, dtype=torch.bool)
    shut_flat[torch.from_numpy(union.indices.astype(np.int64))] = True
    bar = tqdm(total=params.steps * params.rounds, desc=f"refine union of {len(subjects)}", disable=not progress)
    with frozen_unet(model.unet):
        before = [p.eval_loss(_split(space, shut_flat, p.device), draws=params.eval_draws, seed=seed) for p in problems]
        losses, rounds, mean_scores = _shut_in_rounds(problems, space, params, shut_flat, gen, bar)
        after = [p.eval_loss(_split(space, shut_flat, p.device), draws=params.eval_draws, seed=seed) for p in problems]
    mask = ConceptMask.from_indices(space, np.flatnonzero(shut_flat.numpy()))
    report = {
        "class_prompts": [prompt for _, prompt in subjects],
        "neurons": mask.count,
        "added": mask.count - union.count,
        "fraction": mask.fraction,
        "space_fingerprint": space.fingerprint,
        "loss_curve": losses,
        "rounds": rounds,
        "eval_loss_union": before,
        "eval_loss_refined": after,
        "time_s": time.perf_counter() - started,
        "seed": seed,
        "params": params.model_dump(),
    }
    return DiscoveryResult(mask=mask, report=report, scores=mean_scores.numpy())


def concept_loss(unet: nn.Module, batch, cond: torch.Tensor, overrides: dict[str, torch.Tensor],
                 added: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """MSE (fp32) between the UNet's prediction and the batch target, K/V weights taken from `overrides`.

    cond: [1, T, D] (broadcast to the batch) or [B, T, D]. added: the UNet's added_cond_kwargs
    (SDXL's pooled text embeddings and time ids), rows as cond's, or None.
    """
    dtype = cond.dtype
    n = batch.noisy.shape[0]
    text = cond.expand(n, -1, -1) if cond.shape[0] == 1 else cond
    kwargs: dict[str, Any] = {"encoder_hidden_states": text}
    if added is not None:
        kwargs["added_cond_kwargs"] = _broadcast(added, n)
    # tie_weights=False: K/V projections are never tied, and the tie search walks every parameter
    # of the UNet in Python on each call (1.7 ms of a 686-parameter SD-1.5 UNet, measured on CPU).
    pred = functional_call(unet, overrides, (batch.noisy.to(dtype), batch.timesteps), kwargs, tie_weights=False).sample
    return F.mse_loss(pred.float(), batch.target.float())


def text_conditions(model, prompts: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """(text states [B, T, D], added_cond_kwargs or None): what the UNet is conditioned on for `prompts`.

    A model without added conditions (anything with only `encode_prompts`) gets None.
    """
    conditions = getattr(model, "conditions", None)
    if conditions is None:
        return model.encode_prompts(list(prompts)), None
    return conditions(list(prompts))


def _broadcast(added: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in added.items()}


def _take(added: dict[str, torch.Tensor] | None, idx: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The rows of per-image added conditions for the drawn images (one shared row stays as it is)."""
    if added is None:
        return None
    return {k: v if v.shape[0] == 1 else v[idx.to(v.device)] for k, v in added.items()}


# ---------------------------------------------------------------- the problem a step solves


@dataclass
class DiscoveryProblem:
    """Everything a step needs, resolved once: inputs, text, the DDPM process, the base K/V weights.

    Public for the lab's benchmarks (cones_lab/benchmarks.py), which time one `score_step` against
    a fine-tuning step on the same problem.
    """

    unet: nn.Module
    space: NeuronSpace
    scheduler: Any
    x0: torch.Tensor  # subject, [N, C, h, w] fp32
    prior: torch.Tensor | None  # base model's class images, [M, C, h, w] fp32
    prior_weight: float
    cond: torch.Tensor  # class prompt, [1, T, D] or one per image [N, T, D], in the UNet's dtype
    base: dict[str, torch.Tensor]  # K/V weights, fp32, detached
    dtype: torch.dtype
    device: torch.device
    batch_size: int
    _order: list[int] = field(default_factory=list)
    loss_scale: float = 1.0  # set to 2**16 for fp16 UNets in build (see _grads)
    prior_cond: torch.Tensor | None = None  # the prior images' prompt, [1, T, D]
    added: dict[str, torch.Tensor] | None = None  # SDXL's added_cond_kwargs, rows as cond's
    prior_added: dict[str, torch.Tensor] | None = None

    @classmethod
    def build(cls, model, space, images, class_prompt, prior_images, prior_weight, batch_size, gen, *,
              prior_prompt: str | None = None) -> DiscoveryProblem:
        unet = model.unet
        first = next(unet.parameters())
        x0 = images_to_model_inputs(model, images, generator=gen)
        prior = images_to_model_inputs(model, prior_images, generator=gen) if prior_weight > 0 else None
        with torch.no_grad():
            cond, added = text_conditions(model, _prompts_for(class_prompt, len(x0)))
            cond = cond.to(first.device, first.dtype)
            prior_cond, prior_added = None, None
            if prior is not None:
                prior_cond, prior_added = (cond, added) if prior_prompt is None else text_conditions(model, [prior_prompt])
                prior_cond = prior_cond.to(first.device, first.dtype)
        modules = space.modules(unet)
        base = {e.name: modules[e.name].weight.detach().float() for e in space.entries}
        return cls(unet, space, training_scheduler(model.scheduler), x0, prior, prior_weight, cond, base,
                   first.dtype, first.device, batch_size, loss_scale=initial_loss_scale(first.dtype),
                   prior_cond=prior_cond, added=added, prior_added=prior_added)

    def added_for(self, idx: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The UNet's added_cond_kwargs for the drawn images `idx` ([n] each), or None."""
        return None if self.added is None else _broadcast(_take(self.added, idx), len(idx))

    def batch_indices(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        # epoch-style: every image is seen once before any repeats (lower-variance scores than iid draws)
        out = []
        while len(out) < size:
            if not self._order:
                self._order = torch.randperm(n, generator=gen).tolist()
            out.append(self._order.pop())
        return torch.tensor(out)

    def _weights(self, shut_layers, multiplier) -> dict[str, torch.Tensor]:
        theta = {}
        for e in self.space.entries:
            w = self.base[e.name] if multiplier is None else self.base[e.name] * multiplier[e.name]
            if shut_layers is not None and shut_layers[e.name] is not None:
                w = w.masked_fill(shut_layers[e.name], 0.0)
            theta[e.name] = w
        return theta

    def score_step(self, shut_layers, multiplier, sums, rho: float, gen: torch.Generator) -> float:
        """One step: forward, backward w.r.t. the effective K/V weights only, accumulate θ·∂L/∂θ (fp32)."""
        theta = {k: v.detach().requires_grad_(True) for k, v in self._weights(shut_layers, multiplier).items()}
        overrides = {k: v.to(self.dtype) for k, v in theta.items()}
        idx = self.batch_indices(self.x0.shape[0], self.batch_size, gen)
        cond = self.cond if self.cond.shape[0] == 1 else self.cond[idx]  # one prompt, or one per image
        loss = concept_loss(self.unet, noised_batch(self.scheduler, self.x0[idx], generator=gen), cond, overrides,
                            self.added_for(idx))
        if self.prior is not None:
            pidx = torch.randint(0, self.prior.shape[0], (len(idx),), generator=gen)
            loss = loss + self.prior_weight * concept_loss(
                self.unet, noised_batch(self.scheduler, self.prior[pidx], generator=gen), self.prior_cond[:1], overrides,
                _take(self.prior_added, torch.zeros(1, dtype=torch.long)),
            )
        grads, scale = self._grads(loss, list(theta.values()))
        with torch.no_grad():
            # one multi-tensor kernel instead of three launches per layer (32 layers at SD scale): on a GPU
            # this step is launch-bound, and `cones bench discovery` compares it with a fused AdamW step
            torch._foreach_addcmul_([sums[k] for k in theta], list(theta.values()), grads, value=1.0 / scale)
            if multiplier is not None and rho:
                for name, g in zip(theta, grads):
                    # θ ← θ − ρ·θ²·g with θ = base·m  ⇔  m ← m − ρ·base·m²·g  (never the caller's weights)
                    multiplier[name].sub_((rho / scale) * self.base[name] * multiplier[name].square() * g)
        return float(loss.detach())

    def _grads(self, loss: torch.Tensor, leaves: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
        """fp32 ∂(scale·loss)/∂leaves and the scale. Under fp16 the backward runs with a loss scale
        (halved on overflow): K/V gradients of a well-trained model are ~1e-6..1e-8, at or below fp16's
        smallest subnormal (6e-8), so unscaled they would flush to zero — the notebook's fp16 defect in
        another place. The leaves are fp32, so the grads arrive in fp32 and the caller unscales them."""
        while True:
            scale = self.loss_scale
            grads = torch.autograd.grad(loss * scale, leaves, retain_graph=scale > 1.0)
            # max |g| per layer in one multi-tensor kernel; NaN and inf survive it; one device sync
            finite = bool(torch.stack(torch._foreach_norm(grads, float("inf"))).isfinite().all())
            if finite or scale == 1.0:
                break
            self.loss_scale = max(scale / 2.0, 1.0)
        if not finite:
            raise FloatingPointError(
                "non-finite gradients in discovery even without loss scaling: the UNet overflows in "
                f"{self.dtype}; run discovery in float32 or bfloat16"
            )
        return [g.float() for g in grads], scale  # .float(): a no-op for the fp32 leaves discovery passes

    @torch.no_grad()
    def eval_loss(self, shut_layers, *, draws: int, seed: int) -> float | None:
        """Subject loss under the class prompt on fixed (t, ε) draws: unmasked (None) or with neurons shut."""
        if draws == 0:
            return None
        gen = torch.Generator().manual_seed(seed + 1)
        overrides = {k: v.to(self.dtype) for k, v in self._weights(shut_layers, None).items()}
        x0 = self.x0.repeat_interleave(draws, dim=0)
        conds = self.cond.repeat_interleave(draws, dim=0).split(_EVAL_CHUNK) if self.cond.shape[0] > 1 else None
        image = torch.arange(self.x0.shape[0]).repeat_interleave(draws).split(_EVAL_CHUNK)  # each chunk's images
        total = 0.0
        for i, chunk in enumerate(x0.split(_EVAL_CHUNK)):  # fixed: the draws must not depend on batch_size
            cond = self.cond if conds is None else conds[i]
            loss = concept_loss(self.unet, noised_batch(self.scheduler, chunk, generator=gen), cond, overrides,
                                self.added_for(image[i]))
            total += loss.item() * len(chunk)
        return total / len(x0)


_EVAL_CHUNK = 16


def _prompts_for(class_prompt: str | Sequence[str], n_images: int) -> list[str]:
    """One prompt for every image, or one per image ("a triangle on snow" for an image on snow)."""
    if isinstance(class_prompt, str):
        return [class_prompt]
    prompts = list(class_prompt)
    if len(prompts) != n_images:
        raise ValueError(f"got {len(prompts)} prompts for {n_images} images; pass one class prompt, or one prompt per image")
    return prompts


def initial_loss_scale(dtype: torch.dtype) -> float:
    """2^16 for fp16 (K/V gradients sit below its range, see DiscoveryProblem._grads); bf16/fp32 need none."""
    return 2.0**16 if dtype == torch.float16 else 1.0


def _shut_in_rounds(problems, space, params, shut_flat, gen, bar):
    """Cones' iterative loop: per round, mean θ·∂L/∂θ over `steps` (L summed over `problems`),
    then shut the round's budget. Updates `shut_flat` in place; returns (losses, rounds, last mean scores)."""
    multiplier = None  # the soft step's per-weight multipliers m (θ = base·m), only when ρ > 0
    if params.rho:
        multiplier = {e.name: torch.ones(e.shape, dtype=torch.float32, device=problems[0].device) for e in space.entries}
    losses: list[float] = []
    rounds: list[dict[str, Any]] = []
    mean_scores = torch.zeros(space.size)
    for r in range(params.rounds):
        shut_layers = _split(space, shut_flat, problems[0].device)
        sums = {e.name: torch.zeros(e.shape, dtype=torch.float32, device=problems[0].device) for e in space.entries}
        round_losses = []
        for _ in range(params.steps):
            loss = sum(p.score_step(shut_layers, multiplier, sums, params.rho, gen) for p in problems)
            round_losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", shut=int(shut_flat.sum()))
        # mean, not sum: τ means the same whatever `steps` is (the notebook's defect)
        mean_scores = torch.cat([(sums[e.name] / params.steps).reshape(-1).cpu() for e in space.entries])
        budget = round_budget(
            mode=params.threshold, value=params.threshold_value, size=space.size, rounds=params.rounds, round_index=r
        )
        chosen = select_neurons(
            mean_scores.numpy(), excluded=shut_flat.numpy(), mode=params.threshold, value=params.threshold_value, budget=budget
        )
        shut_flat[torch.from_numpy(chosen)] = True
        losses.extend(round_losses)
        rounds.append({"round": r, "selected": int(chosen.size), "mean_loss": float(np.mean(round_losses)),
                       "positive_scores": int((mean_scores > 0).sum())})
    bar.close()
    return losses, rounds, mean_scores


def _split(space: NeuronSpace, shut_flat: torch.Tensor, device) -> dict[str, torch.Tensor | None]:
    """Global bool [size] -> {name: bool [out, in] on device, or None when nothing in it is shut}."""
    out = {}
    for e in space.entries:
        part = shut_flat[e.offset : e.offset + e.numel]
        out[e.name] = part.reshape(e.shape).to(device) if bool(part.any()) else None
    return out


@contextlib.contextmanager
def frozen_unet(unet: nn.Module) -> Iterator[None]:
    """No parameter of `unet` asks for grads inside (only our K/V copies do); flags restored after."""
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    unet.requires_grad_(False)
    try:
        yield
    finally:
        for name, p in unet.named_parameters():
            p.requires_grad_(flags[name])
