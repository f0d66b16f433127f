"""A static HTML report of a customization run (docs/pipeline.md, "Results").

One self-contained file: images and plots are embedded as `data:` URIs, so the report opens
offline, from any store, with no server and no sibling files. At the top: the run's summary,
its settings (composition strategy, discovery, generation), each subject's reference photos
once, and matplotlib plots of the scores; then one image grid per subject combination (one
figure per seed), ranked by score.

Size: images go in as thumbnails (`thumbnail`: at most THUMB_SIDE px, re-encoded when larger
than THUMB_BYTES), and grids only for the best `max_shown` combinations, so the page grows with
`max_shown`, not with the run (a bound measured by tests/flows/test_report_browser.py).

Matplotlib is used through `matplotlib.figure.Figure`, not pyplot: no global backend state,
safe in worker threads, nothing configured at import time.
"""

from __future__ import annotations

import base64
import html
import io
from array import array
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


THUMB_SIDE = 128  # px: the size the page shows every image at
THUMB_BYTES = 8 * 1024  # an image this small and no wider than THUMB_SIDE goes in as stored (toy renders: ~0.5 KB)
REFERENCES_SHOWN = 8  # reference photos per subject at the top


@dataclass(frozen=True)
class ReportEntry:
    """One subject combination and prompt: its images (one per seed) and mean scores per metric."""

    combination_key: str
    subjects: tuple[str, ...]
    prompt: str
    images: tuple[tuple[int, bytes], ...]  # (seed, PNG bytes)
    scores: Mapping[str, float] = field(default_factory=dict)  # metric → mean over seeds


@dataclass(frozen=True)
class ReferencePhoto:
    """One photo a subject was handed in with; `caption` for a scene photo (docs/composition.md)."""

    image: bytes | None  # PNG (or JPEG) bytes as stored; None: not read (past the first REFERENCES_SHOWN)
    caption: str | None = None


def thumbnail(image: bytes, *, max_side: int = THUMB_SIDE, max_bytes: int = THUMB_BYTES) -> tuple[str, bytes]:
    """(MIME type, bytes) of `image` for the page: as stored when it is small, else a JPEG of at most `max_side` px.

    Never upscales: a 16 px toy render stays 16 px (the page scales it up without smoothing).
    """
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        if max(im.size) <= max_side and len(image) <= max_bytes and im.format in ("PNG", "JPEG"):
            return f"image/{im.format.lower()}", image
        small = im.convert("RGB")
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80, optimize=True)
    return "image/jpeg", buffer.getvalue()


def rank_entries(entries: Sequence[ReportEntry], *, metric: str) -> list[ReportEntry]:
    """Best first by `metric`; entries without it go last (stable for ties)."""
    return sorted(entries, key=lambda e: (metric not in e.scores, -e.scores.get(metric, 0.0)))


class ScoreTally:
    """What the score plots show of every combination, gathered one combination at a time: each metric's
    values (8 B a combination) and its sums by number of subjects. A run of millions of combinations
    is plotted without holding its combinations (docs/scale.md, "Selecting a run's grid")."""

    def __init__(self) -> None:
        self.values: dict[str, array] = defaultdict(lambda: array("d"))
        self._sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
        self.combinations = 0
        self.generations = 0  # kept by callers that know each combination's seeds

    def add(self, subjects: int, scores: Mapping[str, float]) -> None:
        self.combinations += 1
        for metric, value in scores.items():
            self.values[metric].append(value)
            total = self._sums[metric][subjects]
            total[0] += value
            total[1] += 1

    @classmethod
    def of(cls, entries: Sequence[ReportEntry]) -> ScoreTally:
        tally = cls()
        for entry in entries:
            tally.add(len(entry.subjects), entry.scores)
        return tally

    def by_k(self, metric: str) -> dict[int, float]:
        """Subjects per combination → the metric's mean over those combinations."""
        return {k: total / n for k, (total, n) in sorted(self._sums[metric].items())}


def score_plots(entries: Sequence[ReportEntry] | ScoreTally) -> list[tuple[str, bytes]]:
    """(title, PNG) of each plot of `score_figures`."""
    return [(name, _figure_png(fig)) for name, fig in score_figures(entries)]


def score_figures(entries: Sequence[ReportEntry] | ScoreTally) -> list[tuple[str, object]]:
    """(title, matplotlib Figure): mean of each metric by number of subjects, and each metric's distribution.

    `entries`: the combinations, or their ScoreTally. The title is printed once, by the page's caption
    under the plot, not inside the image too."""
    from matplotlib.figure import Figure

    tally = entries if isinstance(entries, ScoreTally) else ScoreTally.of(entries)
    metrics = sorted(tally.values)
    if not metrics:
        return []
    plots: list[tuple[str, object]] = []

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    for metric in metrics:
        by_k = tally.by_k(metric)
        ks = sorted(by_k)
        ax.plot(ks, [by_k[k] for k in ks], marker="o", label=metric)
        ax.set_xticks(ks)
    ax.set_xlabel("subjects in the combination")
    ax.set_ylabel("mean score")
    ax.legend(fontsize=8)  # no axes title: the page's caption names the plot
    fig.tight_layout()
    plots.append(("Score by number of subjects", fig))

    cols = min(2, len(metrics))  # two a row: four metrics are a 2 × 2 grid the size of the plot beside it
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows + 0.6), dpi=100)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = np.frombuffer(tally.values[metric], dtype=np.float64)
        ax.hist(values, bins=min(20, max(3, len(values))), color="#4c72b0")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("score")
    fig.tight_layout()
    plots.append(("Score distributions", fig))
    return plots


def render_report(
    entries: Sequence[ReportEntry],
    *,
    title: str,
    summary: Mapping[str, object],
    rank_by: str | None = None,
    max_shown: int | None = None,
    settings: Mapping[str, Mapping[str, object]] | None = None,
    references: Mapping[str, Sequence[ReferencePhoto]] | None = None,
    tally: ScoreTally | None = None,
) -> str:
    """The whole report as one HTML string (UTF-8, no external references).

    `tally`: every combination's scores, when `entries` holds only the best of them (ranked, as
    many as are shown): the plots and counts then cover the tally's combinations.

    `settings`: section name → setting → value (the composition strategy, the discovery and
    generation parameters), shown under the summary. `references`: subject → the photos it was
    handed in with, shown once at the top (the first REFERENCES_SHOWN of each) so the generated
    images below can be compared with them.
    `max_shown`: image grids for the first N entries only (after ranking); the plots still
    cover every entry. A run over thousands of combinations would otherwise be a report of
    tens of thousands of inline images that no browser opens.
    """
    if rank_by is not None:
        entries = rank_entries(entries, metric=rank_by)
    shown = entries if max_shown is None else entries[:max_shown]
    total = len(entries) if tally is None else tally.combinations
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
    ]
    if settings:
        parts.append('<section class="settings"><h2>Settings</h2><div class="setting-row">')
        for section, values in settings.items():
            parts += [
                f'<table class="setting" data-section="{esc(section)}"><caption>{esc(section)}</caption>',
                *(f"<tr><th>{esc(str(k))}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in values.items()),
                "</table>",
            ]
        parts.append("</div></section>")
    if references:
        parts.append('<section class="references"><h2>Reference photos</h2>')
        for subject, photos in references.items():
            scenes = sum(p.caption is not None for p in photos)
            count = f"{len(photos) - scenes} photos" + (f" and {scenes} scene photos" if scenes else "")
            if len(photos) > REFERENCES_SHOWN:
                count += f", the first {REFERENCES_SHOWN} shown"
            parts += [
                f'<div class="subject" data-subject="{esc(subject)}"><h3>{esc(subject)} <small>({count})</small></h3>',
                '<div class="image-grid">',
                *(
                    f'<figure title="{esc(p.caption or subject)}"><img alt="{esc(p.caption or subject)}" '
                    f'src="{_data_uri(p.image)}"><figcaption>{"scene" if p.caption else "alone"}</figcaption></figure>'
                    for p in photos[:REFERENCES_SHOWN]
                    if p.image is not None
                ),
                "</div></div>",
            ]
        parts.append("</section>")
    parts += [
        '<section class="plots"><h2>Scores</h2><div class="plot-row">',
        *(
            f'<figure class="plot"><img alt="{esc(name)}" src="data:image/png;base64,{_b64(png)}"><figcaption>{esc(name)}</figcaption></figure>'
            for name, png in score_plots(entries if tally is None else tally)
        ),
        "</div></section>",
        f"<h2>Combinations ({total})</h2>" if len(shown) == total else f"<h2>Combinations (the best {len(shown)} of {total})</h2>",
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
    if len(shown) < total:
        parts.append(
            f'<p class="rest">{total - len(shown)} more combinations are in the catalog: the leaderboard '
            "artifact ranks them all, and <code>cones sql</code> or <code>cones export</code> reads them.</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _data_uri(image: bytes) -> str:
    """A photo or generated image, as its thumbnail."""
    mime, data = thumbnail(image)
    return f"data:{mime};base64,{_b64(data)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# Toy images are 16 px: scale them up without smoothing so the pixels stay readable.
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table.summary th,table.setting th{text-align:left;padding-right:1em;font-weight:600}
.setting-row{display:flex;flex-wrap:wrap;gap:2.5em;align-items:flex-start}
table.setting{font-size:.85em;border-collapse:collapse}table.setting td{max-width:16em}
table.setting caption{text-align:left;font-weight:bold;padding:.3em 0}table.setting th{vertical-align:top}
.references .subject h3{margin:.5em 0 .2em;font-size:1em}.references small{color:#666;font-weight:normal}
.references .image-grid img{width:64px;height:64px}
.plot-row{display:flex;gap:1em;align-items:flex-end}.plot{margin:0;flex:1 1 0;min-width:0}
.plot img{width:100%;height:auto}.plot figcaption{text-align:center;font-weight:600}
.rest{color:#555;border-top:1px solid #ddd;padding-top:.5em}
.combination{border-top:1px solid #ddd;padding:.5em 0}
.combination h3{margin:.2em 0}.prompt{font-style:italic;margin:.2em 0}.scores{color:#555;margin:.2em 0}
.image-grid{display:flex;flex-wrap:wrap;gap:.5em}
.image-grid figure{margin:0;text-align:center;font-size:.8em}
.image-grid img{width:128px;height:128px;image-rendering:pixelated;object-fit:contain;background:#eee}
"""
