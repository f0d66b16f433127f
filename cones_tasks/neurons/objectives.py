"""How concept neurons are chosen: one typed model per objective (docs/discovery.md, docs/config.md).

`DiscoveryParams` is a discriminated union, first by `objective`, then, for `score`, by `scope`:

- `GateObjective` (`objective: gate`, the default; scope 'word' only): a shut gate on every K/V
  weight at the class word's rows, learned with a cost per shut weight held at `density` (1 %).
  Validation's choice for token composition: sparse concepts that compose (docs/research/layout.md).
- `FitObjective` (`objective: fit`; scope 'word' only): the class word's K/V rows' edit learned by
  gradient steps, then the weights whose zeroing makes it (cones_tasks.neurons.word_discovery);
  no neuron budget (≈ 11–14 % of the K/V on the toy model).
- `PromptScoreObjective` (`objective: score, scope: prompt`): the paper's statistic θ·∂L/∂θ at
  every text token, shut in rounds (Cones Alg. 1). What `union` composition needs.
- `WordScoreObjective` (`objective: score, scope: word`): the same statistic through the class
  word's rows alone.

Each model's defaults are what validation chose for it (docs/research/validate-runs.md), so the
settings the README names work as written; `DISCOVERY_FOR` names them per composition strategy.
(The gate's are the best 1 % setting under the layout, docs/research/layout.md.)

A mask's identity (`mask_identity`) hashes only the fields that change which neurons are found,
plus the objective's algorithm version (docs/discovery.md, "A mask's identity").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from cones_tasks.neurons.layout_settings import Layout

if TYPE_CHECKING:  # a type only: settings stay importable without torch (the catalog reads them)
    from cones_tasks.neurons.composition import Composition

__all__ = [
    "DISCOVERY_FOR",
    "DiscoveryParams",
    "FitObjective",
    "GateObjective",
    "PromptScoreObjective",
    "ScoreObjective",
    "WordScoreObjective",
    "legacy_mask_identity",
    "mask_identity",
    "parse_discovery",
]


class _Objective(BaseModel):
    """What every objective shares: frozen, strict, and a mask identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Bump when the objective finds other neurons for the same fields (a changed algorithm): masks
    # stored under the old version are then no longer reused.
    version: ClassVar[int] = 1
    # Fields that only change what a run reports or evaluates, never which neurons it finds.
    report_only: ClassVar[frozenset[str]] = frozenset()
    # The fields a mask's identity named when `version` was set. A field added later must default to
    # the behaviour from before it existed; it enters the identity only when set away from that
    # default, so masks stored before it was added keep their ids.
    identity_fields: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        """The fields that decide which neurons are found (JSON values), for a mask's identity."""
        values = self.model_dump(mode="json")
        return {
            name: values[name]
            for name, info in type(self).model_fields.items()
            if name not in self.report_only and (name in self.identity_fields or getattr(self, name) != info.default)
        }


def _check_threshold(threshold: str, value: float) -> None:
    if threshold == "fraction" and not 0.0 < value <= 1.0:
        raise ValueError(f"threshold 'fraction' needs 0 < threshold_value <= 1, got {value}")
    if threshold == "top_k" and (value < 1 or value != int(value)):
        raise ValueError(f"threshold 'top_k' needs a whole threshold_value >= 1, got {value}")


_SCORE_STEPS = "steps whose θ·∂L/∂θ are averaged per round"
_SCORE_ROUNDS = "1: one-shot; >1: iterative, each round scored with the neurons found so far shut (Cones Alg. 1)"
_BATCH = "subject images per step"
_SCORE = (
    "how neurons are chosen: 'score', rounds of the paper's θ·∂L/∂θ; 'fit', a learned edit of the word's rows; "
    "'gate', learned shut gates held at a density"
)
_THRESHOLD = "tau: shut every neuron with mean score > threshold_value; fraction/top_k: a budget over all rounds"
_THRESHOLD_VALUE = "τ, the fraction of the space, or k"
_COMPOSED = (
    "composed two-object images per reference (docs/composition.md): 0 off, 1 the subject on alternating sides, "
    "2 on both sides"
)


# generation's layout but for `inside` (the why: _WordEditObjective.layout), so outside and lone follow its defaults
DISCOVERY_LAYOUT = Layout(inside=2.0)
_DISCOVERY_LAYOUT_HELP = (
    "attention control while the edit is learned, as generation applies it (cones_tasks.neurons.layout): the class "
    "word held at +lone over a photo of the subject alone, at +inside in the subject's box of a scene photo and "
    "-outside elsewhere; null: off. Strengths only: a photo's box comes with the photo (captions.json). Its inside stays "
    "at 2 where generation's is 4: learned under 4, short discoveries lost their subjects (docs/research/layout.md)"
)


class _WordEditObjective(_Objective):
    """An objective that learns an edit at the class word's rows (fit, gate): word scope, cross-attention only."""

    # Generation holds each subject's word in its region (the layout, on by default); an edit learned without that
    # hold is learned under attention it will not get. Learned under it, 1 % concepts (800 steps) drew pairs 0.83
    # against 0.48 on the toy model's selection seeds (docs/research/layout.md, "Discovery under the layout").
    # Its `inside` stays at 2 while generation's went to 4: learned under 4, the full discovery drew pairs no better
    # (0.83 against 0.85) and a short one (400 steps of 3 images, the demo's) lost its subjects (one subject 0.50,
    # pairs 0.17; docs/research/layout.md, "Inside at 1 %").
    layout: Layout | None = Field(DISCOVERY_LAYOUT, description=_DISCOVERY_LAYOUT_HELP)

    @field_validator("layout")
    @classmethod
    def _strengths_only(cls, layout: Layout | None) -> Layout | None:
        if layout is not None and layout.boxes:
            raise ValueError("a discovery layout takes strengths only (inside, outside, lone): each photo's box of the "
                             "subject comes with the photo (captions.json: {\"caption\": ..., \"box\": [x0, y0, x1, y1]})")
        return layout

    def identity(self) -> dict[str, Any]:
        # Named whenever it acts, at its default too (the default changed what is found); off, it is left out, so
        # masks found before discovery had a layout (the same neurons) keep their ids.
        values = super().identity()
        if self.layout is None:
            values.pop("layout", None)
        return values

    @field_validator("scope", mode="before", check_fields=False)
    @classmethod
    def _word_only(cls, value: object) -> object:
        if value != "word":
            name = cls.model_fields["objective"].default
            raise ValueError(
                f"objective {name!r} learns an edit of the class word's rows: it needs scope 'word'; for the paper's "
                "statistic at every token set objective: score, scope: prompt"
            )
        return value

    @property
    def attention(self) -> Literal["cross"]:
        return "cross"  # text tokens reach the UNet through cross-attention only


class FitObjective(_WordEditObjective):
    """`objective: fit`: the class word's K/V rows' edit, learned, then the weights whose zeroing makes it.

    Every knob is relative to the model (steps in units of the word rows' RMS, a tolerance in the
    same unit, no neuron budget), so the values validation chose on the toy model's 45 k neurons
    apply unchanged to SD-1.5's 19.2 M (docs/composition.md). Word scope only: the neurons act at
    the subject's class word's rows.
    """

    objective: Literal["fit"] = Field("fit", description=_SCORE)
    scope: Literal["word"] = Field("word", description="fit acts at the class word's rows only: always 'word'")
    steps: int = Field(20, ge=1, description="gradient steps per round")
    rounds: int = Field(10, ge=1, description="rounds of `steps`: steps × rounds gradient steps in all")
    batch_size: int = Field(6, ge=1, description=_BATCH)
    learning_rate: float = Field(0.1, gt=0.0, description="Adam step on the word rows' edit, in units of their RMS")
    key_step: float = Field(0.2, gt=0.0, description="the key projections' step as a fraction of learning_rate")
    fit_tolerance: float = Field(
        1e-3, ge=0.0, description="stop adding weights to an output once it gains less than this × the rows' RMS"
    )
    composed: int = Field(0, ge=0, le=2, description=_COMPOSED)

    identity_fields: ClassVar[frozenset[str]] = frozenset(
        {"objective", "scope", "steps", "rounds", "batch_size", "learning_rate", "key_step", "fit_tolerance", "composed",
         "layout"}
    )



class GateObjective(_WordEditObjective):
    """`objective: gate`: a shut gate on every K/V weight at the class word's rows, learned with a cost per shut
    weight that dual ascent holds at `density` (a hard cap at the end); the weights whose gate ends above ½ are
    shut (cones_tasks.neurons.word_discovery, docs/research/sparsity.md). Word scope only."""

    # 2: when the cap binds, gates held at 1 rank by how far past 1 the steps pushed them (version 1 kept the
    # lowest indices among them, dropping the last layers' weights first)
    version: ClassVar[int] = 2

    objective: Literal["gate"] = Field("gate", description=_SCORE)
    scope: Literal["word"] = Field("word", description="gate acts at the class word's rows only: always 'word'")
    # The defaults are the best 1 % setting on the selection seeds: keys at the full step (at 0.2, 1 % lost half its
    # single hits; docs/research/sparsity.md) and 800 steps under the layout (pairs 0.83 against 0.65 at 400;
    # docs/research/layout.md, "Discovery under the layout").
    steps: int = Field(20, ge=1, description="gradient steps per round")
    rounds: int = Field(40, ge=1, description="rounds of `steps`: steps × rounds gradient steps in all")
    batch_size: int = Field(6, ge=1, description=_BATCH)
    learning_rate: float = Field(0.05, gt=0.0, description="Adam step on the gates")
    key_step: float = Field(1.0, gt=0.0, description="the key projections' step as a fraction of learning_rate")
    density: float = Field(
        0.01, gt=0.0, le=1.0,
        description="the fraction of the K/V weights a concept may shut (the cost per shut weight is tuned to hold it)",
    )
    composed: int = Field(0, ge=0, le=2, description=_COMPOSED)

    identity_fields: ClassVar[frozenset[str]] = frozenset(
        {"objective", "scope", "steps", "rounds", "batch_size", "learning_rate", "key_step", "density", "composed",
         "layout"}
    )



class PromptScoreObjective(_Objective):
    """`objective: score, scope: prompt`: the paper's statistic θ·∂L/∂θ at every text token (Cones §3.1–3.2, Alg. 1).

    The defaults are validation's choice for `union` composition: 10 % of the K/V over 30 rounds of
    8 steps (docs/research/validate-runs.md). Keep the rounds iterative: on the toy model shutting
    the top 200 at once RAISED the loss 52 % (neurons share rows) where 20 rounds × 10 lowered it
    (docs/discovery.md).
    """

    objective: Literal["score"] = Field("score", description=_SCORE)
    scope: Literal["prompt"] = Field("prompt", description="the shut neurons act at every text token (the paper)")
    steps: int = Field(8, ge=1, description=_SCORE_STEPS)
    rounds: int = Field(30, ge=1, description=_SCORE_ROUNDS)
    batch_size: int = Field(4, ge=1, description=_BATCH)
    threshold: Literal["tau", "fraction", "top_k"] = Field("fraction", description=_THRESHOLD)
    threshold_value: float = Field(0.1, description=_THRESHOLD_VALUE)
    rho: float = Field(0.0, ge=0.0, description="soft step θ ← θ − ρ·θ²·∂L/∂θ between steps (0: off)")
    prior_weight: float = Field(0.0, ge=0.0, description="λ of the prior-preservation term (0: off)")
    attention: Literal["cross", "self", "both"] = Field("cross", description="which attention layers hold neurons")
    eval_draws: int = Field(4, ge=0, description="fixed (t, ε) draws per image for the report's before/after loss")

    report_only: ClassVar[frozenset[str]] = frozenset({"eval_draws"})
    identity_fields: ClassVar[frozenset[str]] = frozenset(
        {"objective", "scope", "steps", "rounds", "batch_size", "threshold", "threshold_value", "rho", "prior_weight",
         "attention"}
    )

    @model_validator(mode="after")
    def _threshold_fits(self) -> PromptScoreObjective:
        _check_threshold(self.threshold, self.threshold_value)
        return self


class WordScoreObjective(_Objective):
    """`objective: score, scope: word`: the paper's statistic through the class word's rows alone
    (docs/composition.md, "Discovery at the word"); the defaults are those validation ran it with."""

    objective: Literal["score"] = Field("score", description=_SCORE)
    scope: Literal["word"] = Field("word", description="the shut neurons act at the class word's rows only")
    steps: int = Field(8, ge=1, description=_SCORE_STEPS)
    rounds: int = Field(30, ge=1, description=_SCORE_ROUNDS)
    batch_size: int = Field(4, ge=1, description=_BATCH)
    threshold: Literal["tau", "fraction", "top_k"] = Field("fraction", description=_THRESHOLD)
    threshold_value: float = Field(0.1, description=_THRESHOLD_VALUE)
    composed: int = Field(0, ge=0, le=2, description=_COMPOSED)

    identity_fields: ClassVar[frozenset[str]] = frozenset(
        {"objective", "scope", "steps", "rounds", "batch_size", "threshold", "threshold_value", "composed"}
    )

    @model_validator(mode="after")
    def _threshold_fits(self) -> WordScoreObjective:
        _check_threshold(self.threshold, self.threshold_value)
        return self

    @property
    def attention(self) -> Literal["cross"]:
        return "cross"  # text tokens reach the UNet through cross-attention only


def _tags(value: object) -> object:
    """`objective` defaults to 'gate' (the library default); `score` must say its scope."""
    if not isinstance(value, Mapping):
        return value
    if "objective" not in value:
        return {"objective": "gate", **value}
    if value["objective"] == "score" and "scope" not in value:
        raise ValueError(
            "objective 'score' needs a scope: 'prompt' (the paper's, at every text token; union composition) or "
            "'word' (at the class word's rows; token composition)"
        )
    return value


class _AnyOf:
    """JSON schema of the union: `anyOf` where pydantic writes `oneOf`, the discriminator kept.

    `objective` may be left out (it defaults to gate), and then settings such as {"steps": 2} fit
    several objectives' schemas; a JSON-schema validator (Prefect's, on a deployment's parameters)
    would refuse them under `oneOf`. Which objective they are is pydantic's to decide, as above.
    """

    def __get_pydantic_json_schema__(self, core_schema, handler) -> dict[str, Any]:
        schema = handler(core_schema)
        _one_of_to_any_of(schema)
        return schema


def _one_of_to_any_of(node: object) -> None:
    if isinstance(node, dict):
        if "discriminator" in node and "oneOf" in node:
            node["anyOf"] = node.pop("oneOf")
        for value in node.values():
            _one_of_to_any_of(value)
    elif isinstance(node, list):
        for value in node:
            _one_of_to_any_of(value)


ScoreObjective = Annotated[PromptScoreObjective | WordScoreObjective, Field(discriminator="scope")]
DiscoveryParams = Annotated[
    FitObjective | GateObjective | ScoreObjective, Field(discriminator="objective"), BeforeValidator(_tags), _AnyOf()
]
"""Knobs of one discovery run: `FitObjective`, `GateObjective`, `PromptScoreObjective` or `WordScoreObjective`."""

Objective = FitObjective | GateObjective | PromptScoreObjective | WordScoreObjective
_ADAPTER: TypeAdapter[Objective] = TypeAdapter(DiscoveryParams)


def parse_discovery(data: Mapping[str, Any] | str) -> Objective:
    """The objective a mapping (or a JSON string) describes, e.g. {"objective": "score", "scope": "prompt"}."""
    return _ADAPTER.validate_json(data) if isinstance(data, str) else _ADAPTER.validate_python(data)


# What validation chose per composition strategy (docs/research/composition.md): each is its
# objective's defaults, so `grid.composition: union` with no `discovery` gets the paper's tuned 10 %.
DISCOVERY_FOR: dict[Composition, GateObjective | PromptScoreObjective] = {
    "token": GateObjective(),
    "union": PromptScoreObjective(),
}


def mask_identity(params: Objective, *, seed: int) -> dict[str, Any]:
    """What names a discovered mask in the catalog, besides subject and model (its params hash).

    Only what changes which neurons are found: the objective's identity fields, the discovery
    seed, and the objective's algorithm version. `eval_draws` and any later field left at its
    default leave it unchanged, so changing them reuses stored masks (docs/discovery.md).
    """
    return {"discovery": params.identity(), "seed": seed, "version": params.version}


# The flat parameters every mask stored before identities were narrowed was named by, each written out: fifteen
# (tests/fixtures/legacy-catalog), then sixteen once `density` came with the gate objective.
_LEGACY_FIELDS = frozenset(
    {"steps", "batch_size", "threshold", "threshold_value", "rounds", "rho", "prior_weight", "attention", "eval_draws",
     "scope", "objective", "learning_rate", "key_step", "fit_tolerance", "composed"}
)
_LEGACY_FIELD_SETS = (_LEGACY_FIELDS, _LEGACY_FIELDS | {"density"})


def legacy_mask_identity(stored: Mapping[str, Any]) -> dict[str, Any] | None:
    """`mask_identity` of a mask stored under the flat 15-field params; None if `stored` is not one.

    Those masks were named by every field; each objective read only its own (fit and gate no
    threshold, word scope no rho, eval_draws or prior term, prompt scope no fit knobs, only gate
    the density), so the fields the objective has give the identity the same search has today.
    """
    if "version" in stored or set(stored) != {"discovery", "seed"}:
        return None
    flat = stored["discovery"]
    if not isinstance(flat, Mapping) or set(flat) not in _LEGACY_FIELD_SETS:
        return None
    kinds = {("fit", "word"): FitObjective, ("gate", "word"): GateObjective, ("score", "prompt"): PromptScoreObjective,
             ("score", "word"): WordScoreObjective}
    kind = kinds.get((flat["objective"], flat["scope"]))
    if kind is None:
        return None
    fields = {k: v for k, v in flat.items() if k in kind.model_fields}
    if "layout" in kind.model_fields:
        fields["layout"] = None  # found before discovery had a layout
    return mask_identity(kind.model_validate(fields), seed=int(stored["seed"]))
