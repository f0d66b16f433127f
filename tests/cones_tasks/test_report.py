from __future__ import annotations

import base64
import io

import numpy as np
from bs4 import BeautifulSoup
from PIL import Image

from cones_tasks.combinations import enumerate_combinations
from cones_tasks.report import ReportEntry, render_report


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _entries() -> list[ReportEntry]:
    words = {"a-circle": "circle", "b-square": "square", "c-triangle": "triangle", "d-circle": "circle"}
    entries = []
    combos = list(enumerate_combinations(words, max_k=3, templates=["{subjects}", "{subjects} on snow"], seeds=[0]))
    for i, combo in enumerate(combos):
        entries.append(
            ReportEntry(
                combination_key=f"{'+'.join(combo.subjects)}|{combo.prompt}",
                subjects=combo.subjects,
                prompt=combo.prompt,
                images=((0, _png(i)), (1, _png(255 - i))),
                scores={"image_alignment": 0.5 + i / 100, "text_alignment": 0.2 + (i % 3) / 10},
            )
        )
    return entries


def test_one_image_grid_per_combination_and_it_opens_offline():
    entries = _entries()
    assert len(entries) == 28
    page = render_report(entries, title="run <1>", summary={"subjects": 4, "wall_s": 1.5}, rank_by="image_alignment")
    soup = BeautifulSoup(page, "html.parser")
    sections = soup.select("section.combination")
    assert len(sections) == 28
    assert sorted(s["data-combination"] for s in sections) == sorted(e.combination_key for e in entries)
    for section in sections:
        assert len(section.select("div.image-grid")) == 1
        assert len(section.select("div.image-grid img")) == 2
    # Ranked best first by the requested metric.
    first = sections[0]["data-combination"]
    assert first == max(entries, key=lambda e: e.scores["image_alignment"]).combination_key
    # Offline: every image is inline; nothing refers to the network or a sibling file.
    srcs = [img["src"] for img in soup.find_all("img")]
    assert srcs and all(src.startswith("data:image/png;base64,") for src in srcs)
    assert not soup.find_all(["script", "link"])
    decoded = Image.open(io.BytesIO(base64.b64decode(sections[0].select_one("img")["src"].split(",", 1)[1])))
    assert decoded.size == (16, 16)
    # Two matplotlib plots, and the title is escaped.
    assert len(soup.select("section.plots img")) == 2
    assert soup.title.string == "run <1>" and "<title>run &lt;1&gt;</title>" in page


def test_unscored_entries_still_get_their_grid():
    entry = ReportEntry(combination_key="k", subjects=("x",), prompt="a dog", images=((3, _png(9)),))
    soup = BeautifulSoup(render_report([entry], title="t", summary={}), "html.parser")
    assert len(soup.select("section.combination div.image-grid")) == 1
    assert "not scored yet" in soup.select_one("p.scores").text
    assert not soup.select("section.plots img")


def test_max_shown_keeps_the_best_grids_and_plots_every_entry():
    entries = _entries()
    page = render_report(entries, title="t", summary={}, rank_by="image_alignment", max_shown=5)
    soup = BeautifulSoup(page, "html.parser")
    sections = soup.select("section.combination")
    best = sorted(entries, key=lambda e: -e.scores["image_alignment"])[:5]
    assert [s["data-combination"] for s in sections] == [e.combination_key for e in best]
    assert "the best 5 of 28" in soup.find("h2").text
    assert len(soup.select("section.plots img")) == 2
