"""Typed, frozen configuration: one model per flow, composed of small parts (docs/config.md).

Every model is frozen with `extra="forbid"`, so a misspelt key or a wrong type is refused
with the field named, and Prefect renders each flow's config as a form.
Presets (deployments/prefect.yaml, `cones run customize --config`) hold only non-default values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cones_tasks.combinations import check_template
from cones_tasks.ingest import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, validate_subject_id
from cones_tasks.neurons.composition import check_composition
from cones_tasks.neurons.layout import Layout
from cones_tasks.neurons.objectives import (
    DISCOVERY_FOR,
    DiscoveryParams,
    FitObjective,
    PromptScoreObjective,
    WordScoreObjective,
    legacy_mask_identity,
    mask_identity,
)
from cones_tasks.subsets import (
    COMBINATION_FILE_SUFFIXES,
    check_listed,
    check_subject_count,
)

__all__ = [
    "ClipRef",
    "CustomizeConfig",
    "DiscoverConfig",
    "DiscoveryParams",
    "FitObjective",
    "GenerateConfig",
    "GenerationGrid",
    "GridShard",
    "IngestConfig",
    "IngestParams",
    "ModelRef",
    "PromptScoreObjective",
    "RunnerConfig",
    "ScoreConfig",
    "ScoringParams",
    "SubjectSource",
    "WordScoreObjective",
    "legacy_mask_identity",
    "mask_params",
    "with_trusted_pickle",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelRef(_Frozen):
    """A diffusion model in diffusers folder layout (cones_tasks.loading.load_diffusion_model)."""

    path: str = Field(description="folder holding model_index.json, unet/, text_encoder/, tokenizer/, scheduler/")
    device: str = Field("cpu", description='torch device the model runs on: "cpu", "cuda", "cuda:1", "mps"')
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="weights and activations; float16 on a GPU halves memory (discovery keeps fp32 scores)"
    )
    trust_pickle: bool = Field(False, description="allow .bin/.ckpt pickle weights (they can run code)")


class ClipRef(_Frozen):
    """An open_clip model and its local weights (no hub access)."""

    model_name: str = Field(description='an open_clip model name ("ViT-L-14") or a config registered with open_clip')
    weights_path: str = Field(description="local weights file (.safetensors; .pt/.bin need trust_pickle)")
    device: str = Field("cpu", description='torch device the scorer runs on: "cpu", "cuda"')
    trust_pickle: bool = Field(False, description="allow .pt/.bin pickle weights (they can run code)")


class SubjectSource(_Frozen):
    """One subject to ingest: its id, its class word (Cones §3: the prompt names the class), and where its photos are."""

    subject_id: str = Field(description="the subject's name in the catalog: letters, digits, '-', '_', '.'")
    class_word: str = Field(min_length=1, description='e.g. "dog"; the toy world uses the shape: "circle"')
    uri: str = Field(description="a folder or any fsspec URI (file://, memory://, s3://) holding the images")

    @field_validator("subject_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return validate_subject_id(value)


class IngestParams(_Frozen):
    min_side: int = Field(DEFAULT_MIN_SIDE, ge=1, description="reject images whose shorter side is below this (px)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse headers claiming more pixels (decompression bombs)")


def _distinct_sizes(value: tuple[int, ...]) -> tuple[int, ...]:
    if len(set(value)) != len(value):
        raise ValueError(f"k lists a subset size twice: {list(value)}")
    return tuple(sorted(value))


class SampledCombinations(_Frozen):
    """`sample` distinct combinations of each size in `k`, uniform without replacement (docs/scale.md)."""

    sample: int = Field(ge=1, description="combinations drawn for each k")
    k: tuple[Annotated[int, Field(ge=1)], ...] = Field(min_length=1, description="subset sizes to draw, each ≤ max_k")
    seed: int = Field(0, description="seed of the draw (not of the images): the same seed draws the same combinations")

    _k_distinct = field_validator("k")(_distinct_sizes)


class BalancedCombinations(_Frozen):
    """`balanced` distinct combinations of each size in `k` in which every subject appears as often as any other, ±1."""

    balanced: int = Field(ge=1, description="combinations for each k")
    k: tuple[Annotated[int, Field(ge=1)], ...] = Field(min_length=1, description="subset sizes, each ≤ max_k")
    seed: int = Field(0, description="seed of the draw (not of the images): the same seed draws the same combinations")

    _k_distinct = field_validator("k")(_distinct_sizes)


Combinations = Literal["all"] | SampledCombinations | BalancedCombinations | tuple[tuple[str, ...], ...] | str


class GridShard(_Frozen):
    """One of `count` disjoint shares of a grid, chosen by generation id, so N workers split a grid without talking."""

    index: int = Field(ge=0, description="this share, 0..count-1")
    count: int = Field(ge=1, description="how many shares the grid is split into")

    @model_validator(mode="after")
    def _index_below_count(self) -> GridShard:
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} must be below count {self.count}")
        return self


class GenerationGrid(_Frozen):
    """Which images to generate: every k-subset (k ≤ max_k) × template × seed, and how to batch them."""

    max_k: int = Field(3, ge=1, description="largest number of subjects in one combination")
    templates: tuple[str, ...] = Field(("{subjects}",), min_length=1, description="prompts with one {subjects} slot")
    seeds: tuple[int, ...] = Field((0,), min_length=1, description="one image per seed for every combination and template")
    steps: int = Field(25, ge=1, description="denoising steps")
    guidance_scale: float = Field(7.5, ge=0.0, description="classifier-free guidance weight (SD's usual 7.5; the toy model: 3)")
    composition: Literal["union", "token"] = Field(
        "token",
        description="how a combination's masks act together: 'token', each subject's mask at its own class word (the "
        "default: validation's best, docs/research/composition.md); 'union', the paper's union at every token. The "
        "discovery parameters must match: scope 'word' for token, 'prompt' for union",
    )
    combinations: Combinations = Field(
        "all",
        description="which subject subsets: 'all' (every k-subset, k ≤ max_k); {sample: N, k: [..], seed: S} (N per k, "
        "uniform without replacement); {balanced: N, k: [..], seed: S} (N per k, each subject as often as any other "
        "±1); a list of subject-id lists; or the URI of a Parquet or CSV file with a 'subjects' column "
        "(docs/scale.md)",
    )
    layout: Layout | None = Field(
        Layout(),
        description="attention control for token composition (cones_tasks.neurons.layout): each subject's class word "
        "read more strongly inside its own region and less outside it, regions from a reading-order grid (two side "
        "by side, three or four in quadrants) unless `boxes` gives them; null: off. Measured: "
        "docs/research/layout.md",
    )
    sample_batch: int = Field(8, ge=1, description="images per UNet forward (per-sample masks)")
    task_batch: int = Field(64, ge=1, description="combinations per Prefect task: bigger batches, less orchestration overhead")

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for template in value:
            check_template(template)
        return value

    @model_validator(mode="after")
    def _combinations_fit_max_k(self) -> GenerationGrid:
        spec = self.combinations
        if isinstance(spec, (SampledCombinations, BalancedCombinations)) and max(spec.k) > self.max_k:
            raise ValueError(f"combinations.k {list(spec.k)} goes above max_k={self.max_k}")
        if isinstance(spec, tuple):
            check_listed(spec, ids=None, max_k=self.max_k)
        elif isinstance(spec, str) and spec != "all" and not spec.lower().endswith(COMBINATION_FILE_SUFFIXES):
            raise ValueError(
                f"combinations {spec!r} is neither 'all' nor a file ending in {', '.join(COMBINATION_FILE_SUFFIXES)}"
            )
        return self

    def sampler_settings(self) -> dict[str, object]:
        """What changes the pixels (part of every generation id and its `params`); batching does not.

        The layout is named only when it acts (token composition, control on), so a grid without it keeps the ids
        it had before layouts existed."""
        settings: dict[str, object] = {"steps": self.steps, "guidance_scale": self.guidance_scale,
                                       "composition": self.composition}
        if self.layout_in_effect is not None:
            settings["layout"] = self.layout_in_effect.model_dump(mode="json")
        return settings

    @property
    def layout_in_effect(self) -> Layout | None:
        """The layout generation applies: only token composition has a word per subject to hold in a region."""
        return self.layout if self.composition == "token" else None


class ScoringParams(_Frozen):
    clip: ClipRef | None = Field(None, description="open_clip scorer for image and text alignment; None: skip CLIP metrics")
    judge: bool = Field(False, description="toy world only: the judge's per-subject presence")
    batch_size: int = Field(64, ge=1, description="images per scorer forward")
    task_batch: int = Field(256, ge=1, description="generations per Prefect task")

    @model_validator(mode="after")
    def _something_to_score(self) -> ScoringParams:
        if self.clip is None and not self.judge:
            raise ValueError("scoring has nothing to do: set `clip` (an open_clip model and weights) or `judge: true`")
        return self


class RunnerConfig(_Frozen):
    """Where tasks run: threads in this process (default), a Dask cluster, or Ray (docs/pipeline.md, "Fan-out, concurrency, retries")."""

    kind: Literal["threads", "dask", "ray"] = Field(
        "threads", description="task runner: threads in this process, a Dask cluster (extra 'dask'), or Ray (extra 'ray')"
    )
    address: str | None = Field(None, description="dask scheduler (tcp://host:8786) or ray address; None: start a local one")
    workers: int | None = Field(None, ge=1, description="threads, or LocalCluster workers when no address is given")

    @model_validator(mode="after")
    def _address_needs_cluster(self) -> RunnerConfig:
        if self.kind == "threads" and self.address is not None:
            raise ValueError("runner.address is for kind 'dask' or 'ray'; threads run in this process")
        return self


_DISCOVERY = (
    "how concept neurons are found: an objective, chosen by `objective` (gate, the default, fit or score) and for score by "
    "`scope` (prompt or word); each has its own keys and defaults"
)
_DISCOVERY_DEFAULT = "Default: validation's choice for grid.composition (token: objective gate; union: score at prompt scope)"


class _FlowConfig(_Frozen):
    catalog: str = Field(description="catalog URI: a local path, file://, memory:// or s3://")
    runner: RunnerConfig = Field(RunnerConfig(), description="where the flow's tasks run")


# Not Field(min_length=1): pydantic counts a tuple's items after dropping the invalid ones, so one
# bad subject id also reported "Tuple should have at least 1 item" — two errors for one problem.
# This check runs only once every item is valid.
_AT_LEAST_ONE = Field(description="the subjects to ingest: one folder or URI each", json_schema_extra={"minItems": 1})


def _unique_ids(value: tuple[SubjectSource, ...]) -> tuple[SubjectSource, ...]:
    if not value:
        raise ValueError("needs at least one subject")
    # Case-insensitive: "Dog" and "dog" would share one folder on macOS and Windows.
    keys = [s.subject_id.casefold() for s in value]
    if len(keys) != len(set(keys)):
        dupes = sorted({s.subject_id for s in value if keys.count(s.subject_id.casefold()) > 1})
        raise ValueError(f"subject ids must be unique, ignoring case; got duplicates: {dupes}")
    return value


class IngestConfig(_FlowConfig):
    subjects: tuple[SubjectSource, ...] = _AT_LEAST_ONE
    ingest: IngestParams = Field(IngestParams(), description="what ingest accepts")

    _subjects_unique = field_validator("subjects")(_unique_ids)


class DiscoverConfig(_FlowConfig):
    model: ModelRef = Field(description="the diffusion model: masks are found on it and only fit it")
    subjects: tuple[str, ...] = Field(min_length=1, description="subject ids already in the catalog")
    discovery: DiscoveryParams = Field(DISCOVERY_FOR["token"], description=_DISCOVERY)
    seed: int = Field(0, description="discovery seed (noise and timesteps); part of what names a mask")


def _discovery_for_composition(data: object) -> object:
    """No `discovery` given: validation's choice for the grid's composition (objectives.DISCOVERY_FOR)."""
    if isinstance(data, dict) and "discovery" not in data:
        grid = data.get("grid")
        composition = grid.composition if isinstance(grid, GenerationGrid) else (grid or {}).get("composition")
        if composition in DISCOVERY_FOR:
            return {**data, "discovery": DISCOVERY_FOR[composition]}
    return data


def _composition_fits_discovery(config):
    check_composition(config.grid.composition, config.discovery)
    return config


def _combinations_fit_subjects(config):
    check_subject_count(config.grid.combinations, n=len(config.subject_ids))
    if isinstance(config.grid.combinations, tuple):
        check_listed(config.grid.combinations, ids=sorted(config.subject_ids), max_k=config.grid.max_k)
    return config


class GenerateConfig(_FlowConfig):
    model: ModelRef = Field(description="the diffusion model: masks are found on it and only fit it")
    subjects: tuple[str, ...] = Field(min_length=1, description="subject ids whose masks are in the catalog")
    discovery: DiscoveryParams = Field(
        DISCOVERY_FOR["token"], description="which masks to use: those found with these params. " + _DISCOVERY_DEFAULT
    )
    discovery_seed: int = Field(0, description="… and this discovery seed")
    grid: GenerationGrid = Field(GenerationGrid(), description="which images to generate")
    shard: GridShard | None = Field(
        None, description="generate only this share of the grid: N flow runs with shards 0..N-1 of N split it (docs/scale.md)"
    )

    _discovery_default = model_validator(mode="before")(_discovery_for_composition)
    _composition = model_validator(mode="after")(_composition_fits_discovery)
    _combinations = model_validator(mode="after")(_combinations_fit_subjects)

    @property
    def subject_ids(self) -> tuple[str, ...]:
        return self.subjects


class ScoreConfig(_FlowConfig):
    """Scores every generation (or only those of one grid) that this scorer has not scored yet."""

    scoring: ScoringParams = Field(description="how to score: open_clip, the toy judge, or both")
    grid: str | None = Field(
        None, description="a grid id (`generate-combinations` returns it): score only its generations; None: all unscored"
    )


_Config = TypeVar("_Config", bound=BaseModel)


def with_trusted_pickle(config: _Config) -> _Config:
    """`config` with trust_pickle on for every ModelRef and ClipRef in it (`cones run --trust-pickle`)."""
    updates: dict[str, object] = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, (ModelRef, ClipRef)):
            updates[name] = value.model_copy(update={"trust_pickle": True})
        elif isinstance(value, BaseModel) and (trusted := with_trusted_pickle(value)) is not value:
            updates[name] = trusted
    return config.model_copy(update=updates) if updates else config


def mask_params(discovery: DiscoveryParams, *, seed: int) -> dict[str, object]:
    """What names a discovered mask in the catalog, besides subject and model (its params hash): only what changes
    which neurons are found, plus the objective's version (objectives.mask_identity; docs/discovery.md)."""
    return mask_identity(discovery, seed=seed)


class CompactConfig(_Frozen):
    """`compact-catalog`: which tables (empty: all) and how long replaced files stay for readers."""

    catalog: str = Field(description="catalog URI: a local path, file://, memory:// or s3://")
    tables: tuple[str, ...] = Field((), description="table names to compact; empty: every table")
    grace_s: float = Field(3600.0, ge=0.0, description="seconds replaced files stay readable for open snapshots")


class CustomizeConfig(_FlowConfig):
    """The whole run: ingest → discover → generate → score → report."""

    model: ModelRef = Field(description="the diffusion model: masks are found on it and only fit it")
    subjects: tuple[SubjectSource, ...] = _AT_LEAST_ONE
    ingest: IngestParams = Field(IngestParams(), description="what ingest accepts")
    discovery: DiscoveryParams = Field(DISCOVERY_FOR["token"], description=_DISCOVERY + ". " + _DISCOVERY_DEFAULT)
    seed: int = Field(0, description="discovery seed (noise and timesteps); part of what names a mask")
    grid: GenerationGrid = Field(GenerationGrid(), description="which images to generate")
    scoring: ScoringParams | None = Field(None, description="how to score the generations; None: no scoring")
    report: bool = Field(True, description="write the static HTML report into the catalog")
    report_top: int | None = Field(200, ge=1, description="image grids for the best N combinations (None: all)")

    _discovery_default = model_validator(mode="before")(_discovery_for_composition)
    _combinations = model_validator(mode="after")(_combinations_fit_subjects)
    _composition = model_validator(mode="after")(_composition_fits_discovery)

    _subjects_unique = field_validator("subjects")(_unique_ids)

    def ingest_config(self) -> IngestConfig:
        return IngestConfig(catalog=self.catalog, runner=self.runner, subjects=self.subjects, ingest=self.ingest)

    def discover_config(self, subjects: Sequence[str] | None = None) -> DiscoverConfig:
        """The discovery step, for `subjects` (default: all; the parent passes those that ingested)."""
        return DiscoverConfig(
            catalog=self.catalog, runner=self.runner, model=self.model, subjects=tuple(subjects or self.subject_ids),
            discovery=self.discovery, seed=self.seed,
        )

    def generate_config(self, subjects: Sequence[str] | None = None) -> GenerateConfig:
        """The generation step, for `subjects` (default: all); listed combinations naming others are left out."""
        grid = self.grid
        if subjects is not None and isinstance(grid.combinations, tuple):
            kept = set(subjects)
            grid = grid.model_copy(update={"combinations": tuple(r for r in grid.combinations if set(r) <= kept)})
        return GenerateConfig(
            catalog=self.catalog, runner=self.runner, model=self.model, subjects=tuple(subjects or self.subject_ids),
            discovery=self.discovery, discovery_seed=self.seed, grid=grid,
        )

    def score_config(self, grid: str | None = None) -> ScoreConfig | None:
        """The scoring step, for the generations of `grid` (the id `generate-combinations` returned)."""
        if self.scoring is None:
            return None
        return ScoreConfig(catalog=self.catalog, runner=self.runner, scoring=self.scoring, grid=grid)

    @property
    def subject_ids(self) -> tuple[str, ...]:
        return tuple(s.subject_id for s in self.subjects)
