"""`cones config schema|example|docs`: each flow's config as JSON schema, a commented minimal YAML, and
the reference page docs/config.md, all read from the pydantic models (cones_tasks/config.py), so
none of them can drift from what `cones run` accepts."""

from __future__ import annotations

import json
import textwrap
import types
import typing
from typing import Annotated, Any, Literal

import typer

from cones_cli.flow_cmds import FLOWS
from cones_cli.output import console

app = typer.Typer(add_completion=False)  # `cones config …`, added to `cones` by cones_cli/app.py
config_app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(config_app, name="config", help="The flows' configs: JSON schema, a commented example, the reference page.")

FlowArg = Annotated[str, typer.Argument(help=f"The flow, as in `cones run`: {', '.join(FLOWS)}.", show_default=False)]

# The smallest config of each flow a user fills in: a Stable Diffusion folder, one subject folder and, for
# scoring, open_clip weights. Everything else has a default (docs/config.md). `cones config example`
# renders these with each key's description; a test validates them through `cones run`'s loader.
_MODEL = {"path": "models/stable-diffusion-v1-5"}
_SUBJECT = {"subject_id": "my-dog", "class_word": "dog", "uri": "subjects/my-dog"}
_CLIP = {"model_name": "ViT-L-14", "weights_path": "models/open_clip_vit_l14.safetensors"}
MINIMAL: dict[str, dict[str, Any]] = {
    "customize": {"catalog": "cones-catalog", "model": _MODEL, "subjects": [_SUBJECT], "scoring": {"clip": _CLIP}},
    "ingest": {"catalog": "cones-catalog", "subjects": [_SUBJECT]},
    "discover": {"catalog": "cones-catalog", "model": _MODEL, "subjects": ["my-dog"]},
    "generate": {"catalog": "cones-catalog", "model": _MODEL, "subjects": ["my-dog"]},
    "score": {"catalog": "cones-catalog", "scoring": {"clip": _CLIP}},
    "compact": {"catalog": "cones-catalog"},
}


def config_class(flow: str):
    """The config model `cones run <flow>` validates against."""
    import cones_tasks.config as configs

    if flow not in FLOWS:
        console.print(f"[red]error:[/red] no flow {flow!r}; choose one of {', '.join(FLOWS)}")
        raise typer.Exit(2)
    return getattr(configs, FLOWS[flow][2])


def reachable_models(root) -> list[type]:
    """`root` and every pydantic model its fields hold (through Optional, unions and tuples), first-seen order."""
    from pydantic import BaseModel

    seen: list[type] = []

    def inner(annotation) -> list[type]:
        found = [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
        for arg in typing.get_args(annotation):
            found += inner(arg)
        return found

    def walk(model: type) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for sub in inner(field.annotation):
                walk(sub)

    walk(root)
    return seen


# ---------------------------------------------------------------- example


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width=max(40, 96 - len(indent)))]


def _scalar(value: Any) -> str:
    """One YAML value on one line (flow style), e.g. 0, "{subjects}", [0, 1], null."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).removesuffix("\n...\n").strip()


def _model_of(annotation) -> type | None:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model_of(arg)) is not None:
            return found
    return None


def _example_lines(model: type, data: dict[str, Any], indent: str) -> list[str]:
    lines: list[str] = []
    for key, value in data.items():
        field = model.model_fields[key]
        lines += _comment(field.description or "", indent)
        sub = _model_of(field.annotation)
        if sub is not None and isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += _example_lines(sub, value, indent + "  ")
        elif sub is not None and isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{indent}{key}:")
            for item in value:
                item_lines = _example_lines(sub, item, indent + "    ")
                first = next(i for i, line in enumerate(item_lines) if not line.lstrip().startswith("#"))
                item_lines[first] = f"{indent}  - {item_lines[first].lstrip()}"
                lines += item_lines
        else:
            lines.append(f"{indent}{key}: {_scalar(value)}")
    return lines


def render_example(flow: str) -> str:
    """A commented minimal YAML config for `flow`; the optional top-level keys follow, commented out."""
    from pydantic_core import PydanticUndefined

    model = config_class(flow)
    data = MINIMAL[flow]
    lines = [f"# cones run {flow} --config run.yaml   ({model.__name__}; every key: docs/config.md)", ""]
    lines += _example_lines(model, data, "")
    optional = [(k, f) for k, f in model.model_fields.items() if k not in data]
    if optional:
        lines += ["", "# Optional, shown with their defaults:"]
    for key, field in optional:
        default = field.default
        sub = _model_of(field.annotation)
        shown = "{}" if sub is not None and default is not None and default is not PydanticUndefined else _scalar(
            default if default is not PydanticUndefined else None)
        where = f" (keys: docs/config.md#{sub.__name__.lower()})" if sub is not None else ""
        lines.append(f"# {key}: {shown}   # {field.description}{where}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- reference


def _tagged_union(annotation, discriminator: object = None) -> tuple[list[type], list[str]] | None:
    """(the models, the keys that choose between them) of a discriminated union, nested ones flattened; else None.

    `discriminator`: the field's own (pydantic moves a field's `Field(discriminator=...)` off its annotation)."""
    from pydantic.fields import FieldInfo

    keys = [discriminator] if isinstance(discriminator, str) else []
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *metadata = typing.get_args(annotation)
        keys += [m.discriminator for m in metadata if isinstance(m, FieldInfo) and isinstance(m.discriminator, str)]
    if not keys:
        return None
    models: list[type] = []
    for arg in typing.get_args(annotation):
        nested = _tagged_union(arg)
        if nested is None:
            models.append(arg)
            continue
        models += nested[0]
        keys += [k for k in nested[1] if k not in keys]
    return models, keys


def _type_name(annotation, discriminator: object = None) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if (tagged := _tagged_union(annotation, discriminator)) is not None:  # e.g. discovery: one model per objective
        models, keys = tagged
        names = [_type_name(m) for m in models]
        return f"{', '.join(names[:-1])} or {names[-1]}, chosen by " + " then ".join(f"`{k}`" for k in keys)
    if origin is typing.Annotated:  # constrained items, e.g. tuple[Annotated[int, Field(ge=1)], ...]
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}" if args else "list"
    model = _model_of(annotation)
    if model is not None:
        return f"[{model.__name__}](#{model.__name__.lower()})"
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _default(field) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return "**required**"
    if field.default is PydanticUndefined:
        return "(computed)"
    if isinstance(field.default, BaseModel):
        # a default that sets some of its model's fields (discovery's layout: inside 2) says which
        changed = field.default.model_dump(mode="json", exclude_defaults=True)
        but = f" but `{json.dumps(changed, ensure_ascii=False)}`" if changed else ""
        if field.discriminator is not None:  # one of several models: say which
            return f"[{type(field.default).__name__}](#{type(field.default).__name__.lower()})'s defaults{but}"
        return f"its defaults{but}"
    return f"`{json.dumps(field.default, ensure_ascii=False)}`"


def render_reference() -> str:
    """docs/config.md: every flow's config and every part, one table each, from the models."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `cones config docs > docs/config.md` from cones_tasks/config.py; "
        "tests/cones_cli/test_config_cmds.py fails when it is stale. Edit the models' descriptions, not this file. -->",
        "",
        "Each flow takes one config (JSON or YAML, `cones run <flow> --config FILE`; the same object is the",
        "`config` parameter of a Prefect deployment). Every model is frozen and refuses unknown keys, so a",
        "misspelt key is an error that names it. `cones config example <flow>` prints a commented minimal",
        "config, `cones config schema <flow>` the JSON schema.",
        "",
        "| flow | command | config |",
        "|---|---|---|",
    ]
    roots = [config_class(flow) for flow in FLOWS]
    for flow, model in zip(FLOWS, roots):
        name = FLOWS[flow][1].replace("_", "-")
        lines.append(f"| `{name}` | `cones run {flow}` | [{model.__name__}](#{model.__name__.lower()}) |")
    done: list[type] = []
    for root in roots:
        for model in reachable_models(root):
            if model in done:
                continue
            done.append(model)
            lines += ["", f"## {model.__name__}", ""]
            doc = typing.cast(str, model.__doc__ or "")
            if doc and not doc.startswith(model.__name__ + "("):  # pydantic's generated docstring is no help
                lines += [" ".join(doc.split()), ""]
            lines += ["| key | type | default | description |", "|---|---|---|---|"]
            for key, field in model.model_fields.items():
                description = (field.description or "").replace("|", "\\|")
                lines.append(f"| `{key}` | {_type_name(field.annotation, field.discriminator)} | {_default(field)} | {description} |")
    lines += ["", "## Example: `cones config example customize`", "", "```yaml", render_example("customize").rstrip(), "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- commands


@config_app.command("schema")
def schema(flow: FlowArg) -> None:
    """Print the flow's config as JSON schema (what Prefect renders as the deployment's form)."""
    print(json.dumps(config_class(flow).model_json_schema(), indent=2))


@config_app.command("example")
def example(flow: FlowArg) -> None:
    """Print a commented minimal YAML config for the flow: `cones config example customize > run.yaml`."""
    print(render_example(flow), end="")


@config_app.command("docs")
def docs() -> None:
    """Print the configuration reference (docs/config.md is this output)."""
    print(render_reference(), end="")
