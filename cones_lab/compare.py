"""Cones against dense K/V fine-tuning and LoRA on the toy world: same subjects, references, seeds, prompts and judge.

Every method gets what `cones toy validate --quick` hands discovery (validate.discovery_references:
six reference renders under context prompts, plus captioned scene photos) and is judged by
validate's own lines (validate.single_line, context_line, crosstalk_line, multi_line). A
baseline's hyper-parameters (its step budget and learning rate) are chosen on the selection
seeds by validate's key, the mean of single hit and context, and every number is reported on the
report seeds. Its multi-subject mode — the two subjects' deltas summed, or one joint fine-tune
on the union of their images (trained per combination) — is chosen the same way, on multi 2.

Storage is what was written: every concept goes through the caller's `store(key, bytes) -> bytes
written`, and bytes_per_concept is the mean of what it returned. The SD-1.5 figure serialises
the same kind of concept for SD-1.5's K/V shapes (`sd15_bytes_per_concept`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cones_lab.baselines.dense_kv import KVDelta, added, finetune_kv_on
from cones_lab.baselines.lora import LoraFactors, LoraParams, train_lora_on
from cones_lab.baselines.training import FineTuneParams, References, references
from cones_lab.benchmarks import preset_unet
from cones_lab.validate import (
    PriorImages, ValidateParams, context_line, crosstalk_line, discovery_references, line_seeds, mask_lines,
    multi_line, single_line,
)
from cones_tasks.neurons.discovery import discover_concept_neurons
from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.objectives import DISCOVERY_FOR, DiscoveryParams, PromptScoreObjective
from cones_tasks.neurons.space import NeuronSpace, attention_modules
from cones_tasks.sampling import sample
from cones_tasks.toyworld.captions import class_prompt

__all__ = ["COLUMNS", "CompareParams", "MultiMode", "compare_toy", "markdown_table", "sd15_bytes_per_concept"]

MultiMode = Literal["summed", "joint"]
COLUMNS = ("method", "single_hit", "context", "crosstalk", "multi_2", "bytes_per_concept", "sd15_bytes_per_concept",
           "seconds_per_concept")
Store = Callable[[str, bytes], int]


class CompareParams(BaseModel):
    """One comparison run: the sampling and seeds (validate's), Cones' setting, each baseline's candidates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampling: ValidateParams = Field(
        ValidateParams(images_per_line=48, select_images_per_line=24, sample_steps=20, scene_references=12,
                       multi_sizes=(2,), ceilings=False, reversed_order=False, prompt_modes=("context",), layout=None),
        description="images per line, sampler, references (with scene photos) and the selection/report seeds, as "
        "`cones toy validate --quick` sets them, without attention control: the baselines' weight updates have no "
        "word of their own to hold in a region, so every method is compared on its concepts alone",
    )
    cones: DiscoveryParams = Field(DISCOVERY_FOR["token"], description="Cones' setting (the library default, token composition)")
    dense_kv: tuple[FineTuneParams, ...] = Field(
        (FineTuneParams(steps=40, learning_rate=3e-3), FineTuneParams(steps=400, learning_rate=2e-3)), min_length=1,
        description="dense K/V fine-tunes to choose from on the selection seeds (one: reported without a selection run)",
    )
    lora: tuple[LoraParams, ...] = Field(
        (LoraParams(steps=40, learning_rate=1e-2), LoraParams(steps=400, learning_rate=3e-3)), min_length=1,
        description="LoRA fine-tunes to choose from on the selection seeds",
    )
    methods: tuple[Literal["cones", "dense_kv", "lora"], ...] = Field(
        ("cones", "dense_kv", "lora"), min_length=1, description="the rows to measure, in this order"
    )
    multi_modes: tuple[MultiMode, ...] = Field(
        ("summed", "joint"), min_length=1,
        description="multi-subject modes of the baselines, the best chosen on the selection seeds: 'summed' adds the "
        "subjects' deltas, 'joint' fine-tunes once per combination on the union of their references",
    )


def compare_toy(model, subjects: Sequence, judge: Callable[[np.ndarray], Any], *, store: Store,
                params: CompareParams = CompareParams(), progress: bool = False) -> dict[str, Any]:
    """{"rows": one per method (COLUMNS), "details": per method, "subjects", "seeds", ...} on `subjects` (≥ 2 toy subjects).

    store(key, blob) persists one concept ("cones/<subject>.mask", "dense_kv/<subject>.safetensors", …) and
    returns the bytes written.
    """
    sp = params.sampling
    if sp.select_seed == sp.report_seed:
        raise ValueError("select_seed and report_seed must differ: numbers reported on the seeds they were tuned on are optimistic")
    if len(subjects) < 2:
        raise ValueError("compare_toy needs at least 2 subjects (cross-talk and multi 2 compare subjects)")
    started = time.perf_counter()
    space = NeuronSpace.from_unet(model.unet, attention="cross")
    details = {}
    for method in params.methods:
        if method == "cones":
            details[method] = _cones(model, subjects, judge, store, params, progress)
        else:
            details[method] = _baseline(method, model, subjects, judge, store, params, space, progress)
    rows = [{"method": m, **{c: d[c] for c in COLUMNS[1:]}} for m, d in details.items()]
    return {"rows": rows, "details": details, "subjects": [s.id for s in subjects], "images_per_line": sp.images_per_line,
            "select_images_per_line": sp.select_images_per_line, "sample_steps": sp.sample_steps,
            "seeds": {"discovery": sp.discovery_seed, "select": sp.select_seed, "report": sp.report_seed},
            "torch_threads": torch.get_num_threads(), "time_s": time.perf_counter() - started}


# ---------------------------------------------------------------- Cones


def _cones(model, subjects, judge, store, params: CompareParams, progress) -> dict[str, Any]:
    sp, dp = params.sampling, params.cones
    strategy = "token" if dp.scope == "word" else "union"
    space = NeuronSpace.from_unet(model.unet, attention=dp.attention)
    priors = PriorImages(model, sp)
    masks, seconds, written = {}, [], []
    for s in subjects:
        images, prompts, boxes = discovery_references(s, sp, sp.prompt_modes[0], scenes=dp.scope == "word")
        t0 = time.perf_counter()
        masks[s.id] = discover_concept_neurons(
            model, images, prompts, dp, seed=sp.discovery_seed, progress=False, class_word=s.shape, boxes=boxes,
            prior_images=priors.of(s.shape) if isinstance(dp, PromptScoreObjective) and dp.prior_weight > 0 else None,
            prior_prompt=class_prompt(s.shape),
        ).mask
        seconds.append(time.perf_counter() - t0)
        written.append(store(f"cones/{s.id}.mask", masks[s.id].to_bytes()))
    lines = mask_lines(model, judge, subjects, masks, space, strategy, sp, seed=sp.report_seed, n=sp.images_per_line,
                       progress=progress)
    fraction = float(np.mean([m.fraction for m in masks.values()]))
    return {
        "single_hit": lines["single"]["hit_masked"], "context": lines["context"], "crosstalk": lines["crosstalk"],
        "multi_2": lines["multi"].get("2", float("nan")), "bytes_per_concept": float(np.mean(written)),
        "sd15_bytes_per_concept": sd15_bytes_per_concept("cones", fraction=fraction, seed=sp.discovery_seed),
        "seconds_per_concept": float(np.mean(seconds)), "multi_mode": strategy, "params": dp.model_dump(),
        "neuron_fraction": fraction, "lines": lines,
    }


# ---------------------------------------------------------------- baselines


def _baseline(method, model, subjects, judge, store, params: CompareParams, space, progress) -> dict[str, Any]:
    sp = params.sampling
    candidates = params.dense_kv if method == "dense_kv" else params.lora
    data = _subject_data(model, subjects, sp, any(c.prior_weight > 0 for c in candidates))
    select = dict(n=sp.select_images_per_line)
    selection, best = [], None
    for candidate in candidates:
        trained, seconds = {}, []
        for s in subjects:
            concept, report = _train(method, model, data[s.id], candidate, seed=sp.discovery_seed)
            trained[s.id] = concept
            seconds.append(report["time_s"])
        if len(candidates) == 1:
            best = (None, candidate, trained, seconds)
            break
        generate = _delta_generator(model, judge, sp, space, _single_lookup(trained), seed=sp.select_seed, progress=progress)
        hit = single_line(generate, subjects, **select)
        context = context_line(generate, subjects, **select)["context"]
        selection.append({"params": candidate.model_dump(), "single_hit": hit, "context": context,
                          "seconds_per_concept": float(np.mean(seconds))})
        key = ((hit + context) / 2, -float(np.mean(seconds)))  # validate's key; among ties, the cheaper budget
        if best is None or key > best[0]:
            best = (key, candidate, trained, seconds)
    _, chosen, trained, seconds = best
    written = [store(f"{method}/{sid}.safetensors", concept.to_safetensors()) for sid, concept in trained.items()]

    # multi-subject modes, each a lookup (subjects of one image) -> the delta it is sampled with
    lookups: dict[str, Callable[[tuple], KVDelta | None]] = {}
    joint_report = {}
    if "summed" in params.multi_modes:
        lookups["summed"] = _single_lookup(trained)
    if "joint" in params.multi_modes:
        joint, joint_seconds, joint_bytes = {}, [], []
        for combo in itertools.combinations(subjects, 2):
            both = References.concat([data[s.id] for s in combo])
            concept, report = _train(method, model, both, chosen, seed=sp.discovery_seed, steps=chosen.steps * len(combo))
            joint[frozenset(s.id for s in combo)] = concept
            joint_seconds.append(report["time_s"])
            joint_bytes.append(store(f"{method}/joint/{'+'.join(s.id for s in combo)}.safetensors", concept.to_safetensors()))
        lookups["joint"] = _joint_lookup(trained, joint)
        joint_report = {"joint_seconds_per_combination": float(np.mean(joint_seconds)),
                        "joint_bytes_per_combination": float(np.mean(joint_bytes)), "joint_combinations": len(joint)}
    modes = {}
    for mode, lookup in lookups.items():
        generate = _delta_generator(model, judge, sp, space, lookup, seed=sp.select_seed, progress=progress)
        modes[mode] = {"select_multi_2": multi_line(generate, subjects, k=2, **select)["all_present"]} if len(lookups) > 1 else {}
    mode = max(modes, key=lambda m: modes[m].get("select_multi_2", 0.0))  # first listed wins ties

    report = dict(n=sp.images_per_line)
    generate = _delta_generator(model, judge, sp, space, _single_lookup(trained), seed=sp.report_seed, progress=progress)
    lines = {"single_hit": single_line(generate, subjects, **report), **context_line(generate, subjects, **report),
             **crosstalk_line(generate, subjects, **report)}
    for m, lookup in lookups.items():  # every mode on the report seeds too; the row takes the one chosen above
        generate = _delta_generator(model, judge, sp, space, lookup, seed=sp.report_seed, progress=progress)
        modes[m]["multi_2"] = multi_line(generate, subjects, k=2, **report)
    rank = {"rank": chosen.rank} if isinstance(chosen, LoraParams) else {}
    return {
        "single_hit": lines["single_hit"], "context": lines["context"], "crosstalk": lines["crosstalk"],
        "multi_2": modes[mode]["multi_2"]["all_present"], "bytes_per_concept": float(np.mean(written)),
        "sd15_bytes_per_concept": sd15_bytes_per_concept(method, **rank),
        "seconds_per_concept": float(np.mean(seconds)), "steps_per_concept": chosen.steps, "multi_mode": mode,
        "params": chosen.model_dump(), "selection": selection, "multi_modes": modes, "lines": lines, **joint_report,
    }


def _subject_data(model, subjects, sp: ValidateParams, priors: bool) -> dict[str, References]:
    """Each subject's References: Cones' references (with the scene photos) and, when asked, prior images."""
    prior = PriorImages(model, sp) if priors else None
    out = {}
    for s in subjects:
        images, prompts, _ = discovery_references(s, sp, sp.prompt_modes[0], scenes=True)  # no word to hold: no boxes
        out[s.id] = references(model, images, prompts, prior_images=prior.of(s.shape) if prior else None,
                               prior_prompt=class_prompt(s.shape), generator=torch.Generator().manual_seed(sp.discovery_seed))
    return out


def _train(method, model, data: References, params, *, seed: int, steps: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    if method == "dense_kv":
        result = finetune_kv_on(model, data, params, steps=steps, generator=gen)
    else:
        result = train_lora_on(model, data, params, steps=steps, generator=gen, seed=seed)
    return result.concept, result.report


def _as_delta(concept: KVDelta | LoraFactors) -> KVDelta:
    return concept.delta() if isinstance(concept, LoraFactors) else concept


def _single_lookup(trained: dict) -> Callable[[tuple], KVDelta | None]:
    """One subject: its own concept; several: their deltas summed (the merge mode); none: the base model."""

    def lookup(combo: tuple) -> KVDelta | None:
        return KVDelta.total([_as_delta(trained[s.id]) for s in combo]) if combo else None

    return lookup


def _joint_lookup(trained: dict, joint: dict) -> Callable[[tuple], KVDelta | None]:
    single = _single_lookup(trained)

    def lookup(combo: tuple) -> KVDelta | None:
        return _as_delta(joint[frozenset(s.id for s in combo)]) if len(combo) > 1 else single(combo)

    return lookup


def _delta_generator(model, judge, sp: ValidateParams, space: NeuronSpace, lookup, *, seed: int, progress: bool):
    """validate's Generate for weight updates: images grouped by their subjects, each group sampled with its delta
    added (dense_kv.added). Seeds are per image (validate.line_seeds), so grouping does not change any image."""
    def generate(prompts: list[str], combos: list[tuple], tag: int) -> list:
        seeds = line_seeds(seed, tag, len(prompts))
        groups: dict[tuple, list[int]] = {}
        for i, combo in enumerate(combos):
            groups.setdefault(tuple(s.id for s in combo), []).append(i)
        verdicts: list = [None] * len(prompts)
        for idx in groups.values():
            with added(model.unet, space, lookup(combos[idx[0]])):
                images = sample(model, [prompts[i] for i in idx], seeds=[seeds[i] for i in idx], steps=sp.sample_steps,
                                guidance_scale=sp.guidance_scale, batch_size=sp.batch_size)
            for i, image in zip(idx, images):
                verdicts[i] = judge(image)
        return verdicts

    return generate


# ---------------------------------------------------------------- SD-1.5 storage


def sd15_bytes_per_concept(method: str, *, fraction: float = 0.0, rank: int = 4, seed: int = 0) -> int:
    """Bytes of one concept serialised as `method` does, for Stable Diffusion 1.5's cross-attention K/V shapes.

    The UNet is built from SD-1.5's published config on the meta device, only its K/V weights
    materialised (19.2 M, zeros), so nothing SD-sized is allocated. dense_kv: a full fp32 ΔW
    per matrix; lora: A and B at `rank`; cones: a mask shutting `fraction` of the neurons at
    uniformly random positions — the codec's size depends on the count and spacing of indices, and
    uniform spacing is the least compressible for a given count.
    """
    space = _sd15_space()
    if method == "dense_kv":
        zeros = {e.name: torch.zeros(e.shape) for e in space.entries}
        return len(KVDelta(space.fingerprint, zeros).to_safetensors())
    if method == "lora":
        down = {e.name: torch.zeros(rank, e.shape[1]) for e in space.entries}
        up = {e.name: torch.zeros(e.shape[0], rank) for e in space.entries}
        return len(LoraFactors(space.fingerprint, rank, float(rank), down, up).to_safetensors())
    if method == "cones":
        count = round(fraction * space.size)
        indices = np.random.default_rng(seed).choice(space.size, count, replace=False)
        return len(ConceptMask.from_indices(space, indices).to_bytes())
    raise ValueError(f"unknown method {method!r}; choose cones, dense_kv or lora")


_SD15: list[NeuronSpace] = []


def _sd15_space() -> NeuronSpace:
    if not _SD15:
        with torch.device("meta"):
            unet, _ = preset_unet("sd15")
        for _, module in attention_modules(unet, attention="cross"):
            for proj in (module.to_k, module.to_v):
                proj.to_empty(device="cpu")
                torch.nn.init.zeros_(proj.weight)
        _SD15.append(NeuronSpace.from_unet(unet, attention="cross"))
    return _SD15[0]


# ---------------------------------------------------------------- rendering


def markdown_table(result: dict[str, Any]) -> str:
    """The rows as a markdown table: rates to two places, bytes as KB / MB, seconds to one place."""

    def size(b: float) -> str:
        return f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.1f} KB"

    head = "| method | single hit | context | crosstalk ↓ | multi 2 | bytes / concept (toy) | bytes / concept (SD-1.5) | CPU s / concept |"
    lines = [head, "|" + "---|" * 8]
    for row in result["rows"]:
        mode = result["details"][row["method"]].get("multi_mode", "")
        lines.append(
            f"| {row['method']} | {row['single_hit']:.2f} | {row['context']:.2f} | {row['crosstalk']:.2f} | "
            f"{row['multi_2']:.2f} ({mode}) | {size(row['bytes_per_concept'])} | {size(row['sd15_bytes_per_concept'])} | "
            f"{row['seconds_per_concept']:.1f} |"
        )
    return "\n".join(lines) + "\n"
