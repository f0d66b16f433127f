"""Every figure in the README's results table comes from a committed raw file, and still says what that file says.

The table is the one under "## What we measured". A row with figures names, in `code`, the
command that made its raw file (`cones …`, `make …` or `python …`), and its result cell ends with
an HTML comment (invisible on the rendered page, read here) naming that raw file and where in it
each figure of the row is:

    | Catalog, `cones bench catalog --json`, 3 runs | Jaccard … 33.6 s (32.1–35.0); point lookup
      9.5 ms <!-- source docs/research/bench-catalog.jsonl: 3 count:/*/point_lookup_ms;
      33.6 median:/*/jaccard_matrix_1000_s; 32.1 min:/*/jaccard_matrix_1000_s; … --> | … |

(one line in the README; no `--` inside the comment, which would end it for some renderers).
After the colon, one entry a figure, separated by `;`, in the order the figures appear in the
row's first two cells:

- the figure as printed (`10,800`, `0.52`, `−0.11`: a minus sign, U+2212);
- a selector: a JSON pointer (`/multi/2`); in a JSONL file the root is the list of its lines
  (`/0/ratio` is the first line's). A pointer may hold one `*` (every item of a list, every value
  of an object) when it starts with `median:`, `min:`, `max:`, `mean:` or `count:`, which reduce
  the matches to one number: `median:/*/overhead_fraction` is the median of the runs' lines,
  `min:/*/ratio_to_entropy` the smallest of a list, `count:/*/point_lookup_ms` how many runs;
- optionally a scale that turns the raw value into the printed unit first: `*100` (a fraction
  printed as a percentage), `/1000` (bytes as KB, items/s as k items/s), `/1e6`.

Rounding: a figure printed with d decimals matches a raw value within half a unit of its last
digit (0.52 stands for [0.515, 0.525]; 286 for [285.5, 286.5]).

One run per row: a row has one source comment, so all its figures come from one raw file (JSON or
JSONL under docs/research/, committed), never one run's number beside another's.

What counts as a figure: every number in a row's first two cells outside the comment and outside
`code`, except those joined to a word (SD-1.5, H100, fp16). A row without figures needs no comment; a figure
without a source, a source without its figure, or a figure that no longer rounds from its raw
value fails here.

To add or replace a row: commit the command's raw output under docs/research/ (one JSON line a
run for benchmarks: headlines are the median of at least 3 runs, printed with their spread, or
the bench's own median and spread fields), write the row with its command and its comment, and
run `pytest tests/test_published_numbers.py`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAW_DIR = "docs/research/"

# A number not joined to a word: "0.52", "10,800", "−0.11" (a minus sign, U+2212), not "SD-1.5" or "H100".
FIGURE = re.compile(r"(?<![\w.\-/])(−?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?![\w.,]\d)")
REDUCERS = {"median": statistics.median, "min": min, "max": max, "mean": statistics.fmean, "count": len}


@dataclass
class Source:
    figure: str
    selector: str
    scale: str | None
    text: str


@dataclass
class Row:
    what: str
    figures: list[str]  # as printed, in order, outside the source comment
    path: str | None = None  # the raw file
    run: str | None = None  # the command that made it
    sources: list[Source] = field(default_factory=list)
    error: str | None = None  # a source comment that cannot be read


COMMENT = re.compile(r"<!--(.*?)-->", re.S)
HEADER = re.compile(r"^\s*source\s+(?P<path>[^\s:]+):(?P<entries>.*)$", re.S)
CODE = re.compile(r"`([^`]+)`")
COMMANDS = ("cones ", "make ", "python ")
ENTRY = re.compile(r"^(?P<figure>\S+)\s+(?P<selector>\S+)(?:\s+(?P<scale>[*/]\S+))?$")


def figures_in(text: str) -> list[str]:
    """The figures of a cell: its numbers outside comments and `code` (a command's flags are not results)."""
    return FIGURE.findall(CODE.sub(" ", COMMENT.sub(" ", text)))


def parse_row(line: str) -> Row:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    row = Row(cells[0], figures_in(cells[0]) + figures_in(cells[1]))
    row.run = next((c for cell in cells[:2] for c in CODE.findall(COMMENT.sub(" ", cell)) if c.startswith(COMMANDS)), None)
    comments = [c for cell in cells[:2] for c in COMMENT.findall(cell) if c.strip().startswith("source")]
    if not comments:
        return row
    if len(comments) > 1:
        row.error = f"{len(comments)} source comments; one run per row, one raw file"
        return row
    head = HEADER.match(comments[0])
    if not head:
        row.error = f"cannot read the source comment {comments[0].strip()!r}; write `source PATH: FIGURE SELECTOR; …`"
        return row
    row.path = head["path"]
    for text in filter(None, (e.strip() for e in head["entries"].split(";"))):
        entry = ENTRY.match(text)
        if not entry:
            row.error = f"cannot read the entry {text!r}; write `FIGURE SELECTOR [SCALE]`"
            return row
        row.sources.append(Source(entry["figure"], entry["selector"], entry["scale"], text))
    return row


def parse_table(readme: str) -> list[Row]:
    """The rows of the table under "## What we measured" (header and rule excluded)."""
    section = readme.split("## What we measured", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    return [parse_row(line) for line in lines[1:]]  # lines[0]: the header


def load_raw(path: Path):
    """A JSON file's value; a JSONL file's values as a list, in order.

    A JSONL file is one JSON value a line; a session log kept whole (text lines between
    pretty-printed values, as gpu-h100-bench-sd15.jsonl) is read as the JSON values in it, in
    order, its text lines skipped."""
    text = path.read_text()
    if path.suffix != ".jsonl":
        return json.loads(text)
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        pass
    decoder, values, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        if text[pos] in "{[":
            try:
                value, pos = decoder.raw_decode(text, pos)
                values.append(value)
                continue
            except json.JSONDecodeError:
                pass
        nl = text.find("\n", pos)
        pos = len(text) if nl < 0 else nl + 1
    return values


def _walk(node, parts: list[str], where: str) -> list:
    if not parts:
        return [node]
    head, rest = parts[0], parts[1:]
    if head == "*":
        items = node if isinstance(node, list) else list(node.values()) if isinstance(node, dict) else None
        if not items:
            raise KeyError(f"{where}/*: nothing to iterate")
        return [v for item in items for v in _walk(item, rest, f"{where}/*")]
    key = head.replace("~1", "/").replace("~0", "~")
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise KeyError(f"{where}/{key}: no such item (the list has {len(node)})")
        return _walk(node[int(key)], rest, f"{where}/{key}")
    if not isinstance(node, dict) or key not in node:
        raise KeyError(f"{where}/{key}: no such key")
    return _walk(node[key], rest, f"{where}/{key}")


def select(data, selector: str) -> float:
    """The number a selector names in `data` (module docstring)."""
    reducer = None
    if ":" in selector:
        name, selector = selector.split(":", 1)
        if name not in REDUCERS:
            raise ValueError(f"unknown reducer {name!r}; use one of {sorted(REDUCERS)}")
        reducer = REDUCERS[name]
    if not selector.startswith("/"):
        raise ValueError(f"a selector is a JSON pointer starting with '/': {selector!r}")
    parts = selector[1:].split("/")
    if ("*" in parts) != (reducer is not None):
        raise ValueError(f"'*' and a reducer (median:, min:, max:, mean:, count:) go together: {selector!r}")
    values = _walk(data, parts, "")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{selector} is not a number: {values!r}")
    return float(reducer(values)) if reducer else float(values[0])


def scaled(value: float, scale: str | None) -> float:
    if scale is None:
        return value
    factor = float(scale[1:])
    return value * factor if scale[0] == "*" else value / factor


def printed(figure: str) -> tuple[float, int]:
    """(value, decimals) of a figure as printed."""
    text = figure.replace(",", "").replace("−", "-")
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    return float(text), decimals


def matches(figure: str, value: float) -> bool:
    shown, decimals = printed(figure)
    return math.isfinite(value) and abs(value - shown) <= 0.5 * 10 ** -decimals + 1e-9


def _committed(paths: set[str]) -> set[str]:
    """Of `paths`, those git does not track (empty when this is not a git checkout)."""
    if not paths or shutil.which("git") is None or not (REPO / ".git").exists():
        return set()
    done = subprocess.run(["git", "ls-files", "--", *sorted(paths)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        return set()
    return paths - set(done.stdout.split())


def problems(readme: str, repo: Path = REPO, *, check_git: bool = True) -> list[str]:
    """Everything wrong with the table's figures and their sources; empty when each figure is its source's."""
    out, cited = [], set()
    for row in parse_table(readme):
        where = f"row {row.what!r}"
        if row.error:
            out.append(f"{where}: {row.error}")
            continue
        given = [s.figure for s in row.sources]
        if given != row.figures:
            out.append(f"{where}: the table prints {row.figures}, its source comment lists {given} (same figures, same order)"
                       + ("" if row.path else "; add `<!-- source docs/research/FILE: FIGURE SELECTOR; … -->`"))
        if row.path is None:
            continue
        if not row.run:
            out.append(f"{where}: name the command that made {row.path} in the row, as `code` starting with {' or '.join(COMMANDS)}")
        path = repo / row.path
        if not row.path.startswith(RAW_DIR) or path.suffix not in (".json", ".jsonl"):
            out.append(f"{where}: {row.path} is not a raw JSON/JSONL file under {RAW_DIR}")
            continue
        if not path.is_file():
            out.append(f"{where}: {row.path} does not exist")
            continue
        cited.add(row.path)
        data = load_raw(path)
        for s in row.sources:
            try:
                value = scaled(select(data, s.selector), s.scale)
            except (KeyError, ValueError, TypeError) as exc:
                out.append(f"{where}: {s.text}: {exc}")
                continue
            if not matches(s.figure, value):
                out.append(f"{where}: prints {s.figure}, but {row.path}#{s.selector}{' ' + s.scale if s.scale else ''} is {value:.6g}")
    if check_git:
        out += [f"{p} is not committed (git ls-files does not list it)" for p in sorted(_committed(cited))]
    return out


README = (REPO / "README.md").read_text()


def test_every_figure_in_the_readme_table_matches_its_raw_file():
    assert parse_table(README), "no table under '## What we measured'"
    assert not problems(README), "\n".join(problems(README))


def test_every_row_with_figures_names_its_run_and_raw_file():
    rows = [r for r in parse_table(README) if r.figures]
    assert len(rows) >= 5 and all(r.path and r.run for r in rows), [r.what for r in rows if not (r.path and r.run)]


# ------------------------------------------------------------ the checker catches what it is for


RAW = {"runs": [{"ratio": 1.19, "n": 10800}, {"ratio": 1.30, "n": 10800}, {"ratio": 1.10, "n": 10800}], "share": 0.0082}


def _readme(cell: str, source: str = "docs/research/x.json", entries: str = "") -> str:
    comment = f" <!-- source {source}: {entries} -->" if source else ""
    return (f"## What we measured\n\n| what | result | write-up |\n|---|---|---|\n| Bench, `cones bench x --n 4` | {cell}{comment} | x |\n"
            "| Other | no figures here | y |\n\n## Layout\n")


@pytest.fixture
def repo(tmp_path):
    (tmp_path / RAW_DIR).mkdir(parents=True)
    (tmp_path / RAW_DIR / "x.json").write_text(json.dumps(RAW))
    (tmp_path / RAW_DIR / "x.jsonl").write_text("\n".join(json.dumps(r) for r in RAW["runs"]) + "\n")
    (tmp_path / RAW_DIR / "log.jsonl").write_text("GPU: H100\n" + "\n".join(json.dumps(r, indent=2) for r in RAW["runs"]) + "\n")
    return tmp_path


CELL = "10,800 items; ratio 1.19 (1.10 to 1.30 over 3 runs), SD-1.5 on an H100; 0.8 %"
GOOD = ("10,800 /runs/0/n; 1.19 median:/runs/*/ratio; 1.10 min:/runs/*/ratio; 1.30 max:/runs/*/ratio; "
        "3 count:/runs/*/ratio; 0.8 /share *100")


def test_the_checker_passes_figures_that_match_their_sources(repo):
    assert problems(_readme(CELL, entries=GOOD), repo, check_git=False) == []
    for log in ("docs/research/x.jsonl", "docs/research/log.jsonl"):  # one JSON value a line, or a log holding them
        assert problems(_readme("1.30 and 1.19", log, "1.30 /1/ratio; 1.19 median:/*/ratio"), repo, check_git=False) == []


@pytest.mark.parametrize(("cell", "source", "entries", "complaint"), [
    (CELL.replace("1.19", "1.20"), "docs/research/x.json", GOOD.replace("1.19", "1.20"), "prints 1.20, but"),  # an edited figure
    (CELL.replace("1.19", "1.20"), "docs/research/x.json", GOOD, "the table prints"),  # edited in the text only
    (CELL + "; 4 GPUs", "docs/research/x.json", GOOD, "the table prints"),  # a figure without a source
    (CELL, "", "", "the table prints"),  # a row without a source comment
    (CELL.replace("10,800 items; ", ""), "docs/research/x.json", GOOD, "the table prints"),  # a source without its figure
    (CELL, "docs/research/x.json", GOOD.replace("/share *100", "/share"), "is 0.0082"),  # the unit
    (CELL, "docs/research/x.json", GOOD.replace("/runs/0/n", "/runs/0/count"), "no such key"),
    (CELL, "docs/research/z.json", GOOD, "does not exist"),
    (CELL, "docs/x.md", GOOD, "not a raw JSON/JSONL file"),
    (CELL, "docs/research/x.json", GOOD.replace("median:", ""), "go together"),
    (CELL + " <!-- source docs/research/x.jsonl: 1 /0/ratio -->", "docs/research/x.json", GOOD, "one run per row"),
])
def test_the_checker_fails_an_edited_unsourced_or_mixed_figure(repo, cell, source, entries, complaint):
    found = problems(_readme(cell, source, entries), repo, check_git=False)
    assert any(complaint in p for p in found), found


def test_what_counts_as_a_figure():
    assert figures_in("0.52 (SD-1.5: 1.5 MB vs 76.7 MB) on an H100, fp16, 10,800 items, −0.114 … 0.084, 1.004–1.014×") == [
        "0.52", "1.5", "76.7", "10,800", "−0.114", "0.084", "1.004", "1.014"]
    assert figures_in("[gpu-h100.md](docs/research/gpu-h100.md), ViT-L-14, K/V <!-- source x.json: 0.5 /a -->") == []
    assert figures_in("`cones bench generate --combinations 8 --steps 2`: 0.92") == ["0.92"]


def test_a_sourced_row_names_its_command(repo):
    text = _readme(CELL, entries=GOOD).replace("Bench, `cones bench x --n 4`", "Bench")
    assert any("name the command" in p for p in problems(text, repo, check_git=False))
