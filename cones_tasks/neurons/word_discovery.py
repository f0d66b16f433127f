"""Discovery of word-scoped concept neurons (docs/composition.md, "Discovery at the word").

Both objectives work on the K/V outputs at the class word's rows only; every other row of the
prompt sees the UNet unchanged. With `M` the shut set and `s` the word's own text states [R, D]
(word_scope.class_phrase_states), the word's rows of layer W receive the edit −(W ⊙ M)·s.

- `score` (the paper's statistic, scoped): per round, G = ∂L/∂(row outputs) is averaged over
  `steps` draws with the current M shut; the score of weight θ_ij is θ_ij·∂L/∂θ_ij through those
  rows alone, Σ_r W_ij s_rj G_ri, and the round's budget of best positive scores is shut.
- `fit`: the score is the gradient of the loss with respect to a gate on each weight at 0, one
  step. `fit` takes many: it learns the edit Δ [R, out] of each layer's rows directly (Adam, in
  units of the rows' RMS, kept inside what zeroing weights can reach), then picks, for every output
  coordinate, the weights whose zeroing adds up to Δ (greedy subset sum over the `in` weights of
  that output). The result is still a set of shut neurons, stored as sparse indices.
- `gate`: learns the shut set itself. Every K/V weight gets a gate g in [0, 1]; the word's rows
  receive −((g ⊙ W)·s), so g = 1 is exactly shutting the weight. The loss plus a cost λ per unit of
  gate is minimised by Adam, λ is raised or lowered after every step to hold the shut fraction at
  `density`, and the weights whose gate ends above ½ are shut. Where `fit` first learns a dense edit
  and then looks for weights that make it, here the loss itself decides which few weights are worth
  shutting (docs/research/sparsity.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cones_tasks.neurons.layout import Box, Layout, span_regions
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.objectives import GateObjective
from cones_tasks.neurons.noising import noised_batch
from cones_tasks.neurons.processor import KWARG, ConceptBatch, RowEdits, attached
from cones_tasks.neurons.scores import round_budget, select_neurons
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.word_scope import class_phrase_states, mask_effects
from cones_tasks.neurons.words import text_tokenizers, word_rows

__all__ = ["GateMember", "GateSchedule", "discover_at_word", "gate_fit", "project_edit"]


def discover_at_word(
    problem, model, space: NeuronSpace, params, class_word: str, prompts: Sequence[str], gen, bar,
    *, mentions: Sequence[int] | None = None, boxes: Sequence[Box | None] | None = None,
) -> tuple[ConceptMask, dict[str, Any]]:
    """Word-scoped discovery for one subject: returns its mask and the objective's report entries.

    problem: discovery.DiscoveryProblem (references, their prompts' text states, the DDPM process).
    prompts: the images' prompts, one per image (or one for all), each naming `class_word`.
    mentions: which mention of `class_word` in each prompt is the subject's (default: the first;
    composed references name the class twice, composed.py).
    boxes: the subject's region in each image, None where it is alone (or its place unknown): where
    the objective's `layout` holds the word while the edit is learned (fit and gate).
    """
    states = class_phrase_states(model, class_word).to(problem.device)  # [R, D]
    mentions = list(mentions) if mentions is not None else [0] * len(prompts)
    spans = [word_rows(text_tokenizers(model), p, [class_word] * (m + 1))[m] for p, m in zip(prompts, mentions)]
    if len({len(s) for s in spans}) != 1:
        raise ValueError(f"class word {class_word!r} tokenizes differently across the reference prompts {list(prompts)}")
    if params.objective == "gate":
        member = GateMember(states, spans, boxes=boxes)
        (shut,), gate_report = gate_fit(problem, space, GateSchedule.of(params), [member], gen, bar)
        return ConceptMask.from_indices(space, shut), gate_report
    if params.objective == "fit":
        deltas, fit_report = _fit_edit(problem, space, params, states, spans, gen, bar, boxes=boxes)
        shut, projection = project_edit(problem.unet, space, states, deltas, tolerance=params.fit_tolerance)
        mask = ConceptMask.from_indices(space, shut)
        return mask, {**fit_report, **projection}
    return _score_rounds(problem, space, params, states, spans, gen, bar)


@dataclass(frozen=True)
class GateMember:
    """One subject whose gates a gate fit learns: its word's own states and its rows in each image's prompt.

    Several members are learned in one forward when an image shows several subjects (a combination,
    cones_tasks.neurons.combination): each edit is added at its own word's rows only.
    """

    states: torch.Tensor  # [R, D]: the class word's own text states (word_scope.class_phrase_states)
    # per image (or one for all): the R token rows of this member's mention; None where an image does not show it
    spans: Sequence[tuple[int, ...] | None]
    start: np.ndarray | None = None  # global indices whose gates start shut (1); None: every gate starts open (0)
    # per image (or None for all): the member's region, where a layout holds its word (None: the whole image, `lone`)
    boxes: Sequence[Box | None] | None = None


# ---------------------------------------------------------------- shared: the loss with a row edit


def _drawn_spans(spans, idx: torch.Tensor) -> list:
    """The word's span in each drawn image (spans: one per image, or one for all; None where the image does not
    name the word, e.g. another member's own photo)."""
    return [spans[i] if len(spans) > 1 else spans[0] for i in idx.tolist()]


def _rows_of_batch(spans, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(batch element, token row) of the word in each drawn image, [m·R] each, and m: the drawn images whose
    prompt names the word."""
    chosen = _drawn_spans(spans, idx)
    batch = torch.tensor([b for b, span in enumerate(chosen) if span is not None for _ in span], device=device, dtype=torch.long)
    rows = torch.tensor([r for span in chosen if span is not None for r in span], device=device, dtype=torch.long)
    return batch, rows, sum(span is not None for span in chosen)


def _held(spans, boxes, idx: torch.Tensor) -> list[tuple[int, Sequence[int], Box | None]]:
    """(batch element, the word's rows, its box) for each drawn image whose prompt names the word."""
    return [(b, span, None if boxes is None else boxes[i])
            for b, (i, span) in enumerate(zip(idx.tolist(), _drawn_spans(spans, idx))) if span is not None]


def _edited_loss(problem, space, edits: Sequence[tuple[dict[str, torch.Tensor], Sequence, Sequence | None]], gen,
                 layout: Layout | None = None) -> torch.Tensor:
    """Concept loss of one drawn batch with each (edit {name: [R, out]}, spans, boxes) added at its own word's rows.

    One entry per subject the images show: a combination's members are edited in the same forward,
    so each edit is learned beside the others (cones_tasks.neurons.combination). With a `layout`, each
    word is held in its box of each image (None: the whole image) as generation will hold it.
    """
    idx = problem.batch_indices(problem.x0.shape[0], problem.batch_size, gen)
    cond = problem.cond if problem.cond.shape[0] == 1 else problem.cond[idx.to(problem.cond.device)]
    batch = noised_batch(problem.scheduler, problem.x0[idx], generator=gen)
    n = len(idx)
    located = [_rows_of_batch(spans, idx, problem.device) for _, spans, _ in edits]
    names = list(edits[0][0])
    row_edits = RowEdits(
        batch=torch.cat([b for b, _, _ in located]), rows=torch.cat([r for _, r, _ in located]),
        values={k: torch.cat([edit[k].repeat(m, 1) for (edit, _, _), (_, _, m) in zip(edits, located)]) for k in names},
        batch_size=n,
    )
    regions = None
    if layout is not None:
        regions = span_regions([h for _, spans, boxes in edits for h in _held(spans, boxes, idx)], layout, batch_size=n)
    text = cond.expand(n, -1, -1) if cond.shape[0] == 1 else cond
    with attached(problem.unet):  # the gradient reaches `edit` through the processor's row edits
        pred = problem.unet(batch.noisy.to(problem.dtype), batch.timesteps, encoder_hidden_states=text,
                            added_cond_kwargs=problem.added_for(idx),
                            cross_attention_kwargs={KWARG: ConceptBatch(space, row_edits=row_edits, regions=regions)}).sample
    return F.mse_loss(pred.float(), batch.target.float())


def _row_scale(unet, space, states) -> dict[str, torch.Tensor]:
    """RMS of each layer's unedited K/V output at the word's rows: the unit the fit moves in."""
    modules = space.modules(unet)
    return {
        e.name: (states @ modules[e.name].weight.detach().float().T).pow(2).mean().sqrt().clamp_min(1e-8)
        for e in space.entries
    }


def _reach(unet, space, states) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the box [lo, hi] ([R, out] each) that zeroing weights can move each row output by."""
    modules = space.modules(unet)
    out = {}
    for e in space.entries:
        c = modules[e.name].weight.detach().float()[None] * states[:, None, :]  # [R, out, in] contributions
        out[e.name] = (-c.clamp(min=0).sum(-1), -c.clamp(max=0).sum(-1))
    return out


# ---------------------------------------------------------------- objective: fit


def _fit_edit(problem, space, params, states, spans, gen, bar, *, boxes=None):
    rows = states.shape[0]
    scale = _row_scale(problem.unet, space, states)
    reach = _reach(problem.unet, space, states)
    units = {e.name: torch.zeros(rows, e.shape[0], device=problem.device, requires_grad=True) for e in space.entries}
    keys = {e.name for e in space.entries if _is_key(problem.unet, e)}
    groups = [
        {"params": [units[n] for n in units if n not in keys], "lr": params.learning_rate},
        # keys decide which image positions read the word; a slower key step keeps the word where the
        # model put it (measured: key steps at 0.2× the value step drew pairs 0.32 vs 0.27 at 1×)
        {"params": [units[n] for n in units if n in keys], "lr": params.learning_rate * params.key_step},
    ]
    opt = torch.optim.Adam([g for g in groups if g["params"]])
    losses = []
    total = params.steps * params.rounds
    for _ in range(total):
        edit = {n: units[n] * scale[n] for n in units}
        loss = _edited_loss(problem, space, [(edit, spans, boxes)], gen, params.layout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # stay where shutting weights can reach
            for n, u in units.items():
                lo, hi = reach[n]
                u.copy_(torch.maximum(torch.minimum(u, hi / scale[n]), lo / scale[n]))
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    deltas = {n: (units[n] * scale[n]).detach() for n in units}
    return deltas, {"loss_curve": losses, "rounds": [{"round": 0, "fit_steps": total, "mean_loss": float(np.mean(losses))}]}


def _is_key(unet, entry) -> bool:
    # to_k vs to_v by module identity on the owning Attention, not by parsing the name
    parent = unet.get_submodule(entry.module_name.rsplit(".", 1)[0])
    return parent.to_k is unet.get_submodule(entry.module_name)


@torch.no_grad()
def project_edit(unet, space: NeuronSpace, states: torch.Tensor, deltas: dict[str, torch.Tensor], *, tolerance: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Global indices of the weights whose zeroing makes each layer's row outputs move by `deltas`.

    For output coordinate i of a layer, zeroing weight j moves the word's rows by e_ij = −W_ij·s_j
    (a vector over the R rows). Greedy subset sum: repeatedly add the j that brings the residual
    closest to 0, while it shrinks by more than `tolerance` × the row's RMS. All coordinates of a
    layer step together ([out, in, R] tensors).
    """
    modules = space.modules(unet)
    scale = _row_scale(unet, space, states)
    chosen, err_num, err_den = [], 0.0, 0.0
    for e in space.entries:
        w = modules[e.name].weight.detach().float()
        effect = -(w[:, :, None] * states.T[None, :, :])  # [out, in, R]
        residual = deltas[e.name].T.clone()  # [out, R]: what the shut weights still have to add
        taken = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        step = tolerance * float(scale[e.name])
        for _ in range(w.shape[1]):
            after = (residual[:, None, :] - effect).norm(dim=-1).masked_fill(taken, float("inf"))  # [out, in]
            best, j = after.min(dim=1)
            better = best < residual.norm(dim=-1) - step
            if not bool(better.any()):
                break
            i = torch.nonzero(better).squeeze(1)
            taken[i, j[i]] = True
            residual[i] -= effect[i, j[i]]
        local = torch.nonzero(taken.reshape(-1)).squeeze(1).cpu().numpy().astype(np.int64)
        chosen.append(local + e.offset)
        err_num += float(residual.pow(2).sum())
        err_den += float(deltas[e.name].pow(2).sum())
    return np.concatenate(chosen), {"projection_error": err_num / max(err_den, 1e-20)}


# ---------------------------------------------------------------- objective: gate

# The weight cost starts at this share of the first loss spread over the allowed weights, then follows the
# shut fraction; measured on the toy model, a fixed cost of 1e-7 (3e-7) per weight shut 2.6 % (1.0 %).
_GATE_COST_START = 0.02
# How fast the cost follows the shut fraction: a step of e^±0.1 at most, so 200 steps can move it e^20.
_GATE_COST_STEP = 0.1


@dataclass(frozen=True)
class GateSchedule:
    """How gate_fit moves the gates: one concept's `objective: gate`, or a combination step's joint gates."""

    steps: int  # gradient steps in all
    learning_rate: float  # Adam's step on the gates
    key_step: float  # the key projections' step, as a fraction of learning_rate
    value_step: float  # the value projections' step, as a fraction of learning_rate
    density: float  # each member's cap: the fraction of the K/V weights it may shut
    layout: Layout | None = None  # holds each member's word in its boxes while the gates are learned (None: off)

    @classmethod
    def of(cls, objective: GateObjective) -> GateSchedule:
        """One concept's gates: steps × rounds steps, the values at the full step, under the objective's layout."""
        return cls(objective.steps * objective.rounds, objective.learning_rate, objective.key_step, 1.0, objective.density,
                   objective.layout)


def gate_fit(problem, space, params: GateSchedule, members: Sequence[GateMember], gen, bar
             ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """(global indices to shut, per member; report): gates on every weight, each member's cost held at params.density.

    Every member has its own gates, its own cost per shut weight and its own budget; all edits enter
    one forward at their own words' rows, so one loss decides each member's weights beside the others.
    """
    modules = space.modules(problem.unet)
    keys = {e.name for e in space.entries if _is_key(problem.unet, e)}
    budget = params.density * space.size
    contribs, gates = [], []
    for m in members:
        # contribution of weight (i, j) to output i at the word's rows: −W_ij·s_j, [R, out, in] per layer
        contribs.append({e.name: -(modules[e.name].weight.detach().float()[None] * m.states[:, None, :]) for e in space.entries})
        gates.append(_start_gates(space, m.start, problem.device))
    groups = [
        {"params": [g[n] for g in gates for n in g if n not in keys], "lr": params.learning_rate * params.value_step},
        {"params": [g[n] for g in gates for n in g if n in keys], "lr": params.learning_rate * params.key_step},
    ]
    opt = torch.optim.Adam([g for g in groups if g["params"]])
    overflow = [{n: torch.zeros_like(x) for n, x in g.items()} for g in gates]
    costs, losses, fractions = None, [], []
    for _ in range(params.steps):
        edits = [({n: (c[n] * g[n][None]).sum(-1) for n in g}, m.spans, m.boxes)  # [R, out]
                 for c, g, m in zip(contribs, gates, members)]
        loss = _edited_loss(problem, space, edits, gen, params.layout)
        if costs is None:
            costs = [_GATE_COST_START * float(loss.detach()) / budget] * len(members)
        opt.zero_grad(set_to_none=True)
        (loss + sum(c * sum(x.sum() for x in g.values()) for c, g in zip(costs, gates))).backward()
        opt.step()
        shut = []
        with torch.no_grad():
            for g, over in zip(gates, overflow):
                for n, x in g.items():
                    # how far past 1 Adam keeps pushing a shut gate: the cap's tie-break among gates at 1
                    over[n] = torch.where(x >= 1.0, over[n] + (x - 1.0), torch.zeros_like(x))
                    x.clamp_(0.0, 1.0)
                shut.append(sum(int((x > 0.5).sum()) for x in g.values()))
        # dual ascent on each member's cost: more shut than allowed raises it, fewer lowers it
        costs = [c * float(np.exp(_GATE_COST_STEP * np.clip(k / budget - 1.0, -1.0, 1.0))) for c, k in zip(costs, shut)]
        losses.append(float(loss.detach()))
        fractions.append(float(np.mean(shut)) / space.size)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", shut=f"{fractions[-1]:.4f}")
    chosen = [_capped(space, {n: g[n].detach() + over[n] for n in g}, budget) for g, over in zip(gates, overflow)]
    report = {
        "loss_curve": losses,
        "rounds": [{"round": 0, "fit_steps": len(losses), "mean_loss": float(np.mean(losses))}],
        "gate_cost_final": costs[0] if len(costs) == 1 else costs,
        "shut_fraction_curve": fractions[:: max(1, len(fractions) // 50)],
    }
    return chosen, report


def _start_gates(space, start: np.ndarray | None, device) -> dict[str, torch.Tensor]:
    """Gates per layer ([out, in] each), 1 at the global indices `start` (a mask found before), 0 elsewhere."""
    gates = {e.name: torch.zeros(e.shape, device=device) for e in space.entries}
    if start is not None and len(start):
        for name, local in space.locate(np.asarray(start, dtype=np.int64)).items():
            if local.size:
                gates[name].view(-1)[torch.from_numpy(local).to(device)] = 1.0
    return {n: g.requires_grad_(True) for n, g in gates.items()}


def _capped(space, gates: dict[str, torch.Tensor], budget: float) -> np.ndarray:
    """Sorted global indices of the gates above ½, at most `budget` of them (the highest; a gate held at 1 ranks by
    how far past 1 the steps kept pushing it, so a cap that binds drops the least wanted, not the last layers)."""
    flat = torch.cat([gates[e.name].detach().reshape(-1).cpu() for e in space.entries])
    chosen = torch.nonzero(flat > 0.5).squeeze(1)
    if chosen.numel() > budget:  # the cost holds the fraction on average; the budget is a hard cap
        keep = torch.argsort(flat[chosen], descending=True, stable=True)[: int(budget)]
        chosen = chosen[keep]
    return np.sort(chosen.numpy().astype(np.int64))


# ---------------------------------------------------------------- objective: score


def _score_rounds(problem, space, params, states, spans, gen, bar):
    modules = space.modules(problem.unet)
    rows = states.shape[0]
    shut = torch.zeros(space.size, dtype=torch.bool)
    losses, rounds = [], []
    for r in range(params.rounds):
        mask = ConceptMask.from_indices(space, np.flatnonzero(shut.numpy()))
        base = mask_effects(problem.unet, space, mask, states) if mask.count else {}
        grads = {e.name: torch.zeros(rows, e.shape[0], device=problem.device) for e in space.entries}
        round_losses = []
        for _ in range(params.steps):
            probe = {e.name: torch.zeros(rows, e.shape[0], device=problem.device, requires_grad=True) for e in space.entries}
            edit = {n: p + base[n] if n in base else p for n, p in probe.items()}
            loss = _edited_loss(problem, space, [(edit, spans, None)], gen)
            g = torch.autograd.grad(loss, list(probe.values()))
            for n, gi in zip(probe, g):
                grads[n] += gi
            round_losses.append(float(loss.detach()))
            bar.update(1)
        # θ_ij·∂L/∂θ_ij through the word's rows: W_ij Σ_r s_rj G_ri (mean G over the round's steps)
        scores = torch.cat([
            (modules[e.name].weight.detach().float() * ((grads[e.name] / params.steps).T @ states)).reshape(-1).cpu()
            for e in space.entries
        ])
        budget = round_budget(mode=params.threshold, value=params.threshold_value, size=space.size, rounds=params.rounds, round_index=r)
        picked = select_neurons(scores.numpy(), excluded=shut.numpy(), mode=params.threshold, value=params.threshold_value, budget=budget)
        shut[torch.from_numpy(picked)] = True
        losses.extend(round_losses)
        rounds.append({"round": r, "selected": int(picked.size), "mean_loss": float(np.mean(round_losses))})
    return ConceptMask.from_indices(space, np.flatnonzero(shut.numpy())), {"loss_curve": losses, "rounds": rounds}
