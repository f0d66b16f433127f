"""A static HTML report of a customization run (docs/pipeline.md).

One self-contained file: images and plots are embedded as `data:` URIs, so the report opens
offline, from any store, with no server and no sibling files. One image grid per subject
combination (one figure per seed), ranked by score, plus matplotlib plots of the scores.

Matplotlib is used through `matplotlib.figure.Figure`, not pyplot: no global backend state,
safe in worker threads, nothing configured at import time.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ReportEntry:
    """One subject combination and prompt: its images (one per seed) and mean scores per metric."""

    combination_key: str
    subjects: tuple[str, ...]
    prompt: str
    images: tuple[tuple[int, bytes], ...]  # (seed, PNG bytes)
    scores: Mapping[str, float] = field(default_factory=dict)  # metric → mean over seeds


def rank_entries(entries: Sequence[ReportEntry], *, metric: str) -> list[ReportEntry]:
    """Best first by `metric`; entries without it go last (stable for ties)."""
    return sorted(entries, key=lambda e: (metric not in e.scores, -e.scores.get(metric, 0.0)))


def score_plots(entries: Sequence[ReportEntry]) -> list[tuple[str, bytes]]:
    """PNG plots: mean of each metric by number of subjects, and each metric's distribution."""
    from matplotlib.figure import Figure

    metrics = sorted({m for e in entries for m in e.scores})
    if not metrics:
        return []
    plots: list[tuple[str, bytes]] = []

    by_k: dict[str, dict[int, list[float]]] = {m: defaultdict(list) for m in metrics}
    for entry in entries:
        for metric, value in entry.scores.items():
            by_k[metric][len(entry.subjects)].append(value)
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    for metric in metrics:
        ks = sorted(by_k[metric])
        ax.plot(ks, [float(np.mean(by_k[metric][k])) for k in ks], marker="o", label=metric)
        ax.set_xticks(ks)
    ax.set_xlabel("subjects in the combination")
    ax.set_ylabel("mean score")
    ax.set_title("Score by number of subjects")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.append(("Score by number of subjects", _figure_png(fig)))

    fig = Figure(figsize=(3.2 * len(metrics), 3), dpi=100)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        values = [e.scores[metric] for e in entries if metric in e.scores]
        ax.hist(values, bins=min(20, max(3, len(values))), color="#4c72b0")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("score")
    fig.tight_layout()
    plots.append(("Score distributions", _figure_png(fig)))
    return plots


def render_report(
    entries: Sequence[ReportEntry],
    *,
    title: str,
    summary: Mapping[str, object],
    rank_by: str | None = None,
    max_shown: int | None = None,
) -> str:
    """The whole report as one HTML string (UTF-8, no external references).

    `max_shown`: image grids for the first N entries only (after ranking); the plots still
    cover every entry. A run over thousands of combinations would otherwise be a report of
    tens of thousands of inline images that no browser opens.
    """
    if rank_by is not None:
        entries = rank_entries(entries, metric=rank_by)
    shown = entries if max_shown is None else entries[:max_shown]
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        '<table class="summary">',
        *(f"<tr><th>{esc(str(k))}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in summary.items()),
        "</table>",
        '<section class="plots">',
        *(
            f'<figure class="plot"><img alt="{esc(name)}" src="{_data_uri(png)}"><figcaption>{esc(name)}</figcaption></figure>'
            for name, png in score_plots(entries)
        ),
        "</section>",
        f"<h2>Combinations ({len(entries)})</h2>"
        if len(shown) == len(entries)
        else f"<h2>Combinations (the best {len(shown)} of {len(entries)})</h2>",
    ]
    for rank, entry in enumerate(shown, start=1):
        scores = " · ".join(f"{esc(m)} {v:.3f}" for m, v in sorted(entry.scores.items()))
        parts += [
            f'<section class="combination" data-combination="{esc(entry.combination_key)}">',
            f"<h3>#{rank} {esc(' + '.join(entry.subjects))}</h3>",
            f'<p class="prompt">“{esc(entry.prompt)}”</p>',
            f'<p class="scores">{scores or "not scored yet"}</p>',
            '<div class="image-grid">',
            *(
                f'<figure><img alt="seed {seed}" src="{_data_uri(png)}"><figcaption>seed {seed}</figcaption></figure>'
                for seed, png in entry.images
            ),
            "</div></section>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# Toy images are 16 px: scale them up without smoothing so the pixels stay readable.
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table.summary th{text-align:left;padding-right:1em}
.plots{display:flex;flex-wrap:wrap;gap:1em}
.combination{border-top:1px solid #ddd;padding:.5em 0}
.combination h3{margin:.2em 0}.prompt{font-style:italic;margin:.2em 0}.scores{color:#555;margin:.2em 0}
.image-grid{display:flex;flex-wrap:wrap;gap:.5em}
.image-grid figure{margin:0;text-align:center;font-size:.8em}
.image-grid img{width:128px;height:128px;image-rendering:pixelated;object-fit:contain;background:#eee}
"""
