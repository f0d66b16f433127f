from __future__ import annotations

import base64
import io

import numpy as np
from bs4 import BeautifulSoup
from grid_oracle import enumerate_combinations
from PIL import Image

from cones_tasks.report import REFERENCES_SHOWN, ReferencePhoto, ReportEntry, render_report, score_figures, thumbnail


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
    assert "the best 5 of 28" in soup.select("h2")[-1].text
    assert "23 more combinations" in soup.select_one("p.rest").text
    assert len(soup.select("section.plots img")) == 2


def _photo(side: int, seed: int) -> bytes:
    """A photo-like PNG: smooth colour with grain (PNG cannot squeeze grain, so it stays large)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, side)[None, :, None] + rng.integers(0, 50, (1, 1, 3))
    pixels = np.clip(ramp + rng.normal(0, 6, (side, side, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_large_images_go_in_as_small_thumbnails_and_toy_renders_as_stored():
    toy = _png(7)
    assert thumbnail(toy) == ("image/png", toy)  # 16 px, a few hundred bytes: as stored, never upscaled
    big = _photo(512, 0)
    mime, small = thumbnail(big)
    assert mime == "image/jpeg" and max(Image.open(io.BytesIO(small)).size) == 128
    assert len(small) < len(big) / 20, (len(small), len(big))


def test_references_once_at_the_top_settings_and_each_plot_titled_once():
    entries = _entries()
    references = {
        "a-circle": [ReferencePhoto(_png(1)), ReferencePhoto(_png(2), caption="a circle beside a square")],
        "b-square": [ReferencePhoto(_png(i)) for i in range(REFERENCES_SHOWN)] + [ReferencePhoto(None)] * 3,
    }
    settings = {"composition": {"strategy": "token"}, "discovery": {"objective": "fit", "steps": 20}}
    soup = BeautifulSoup(
        render_report(entries, title="t", summary={}, settings=settings, references=references), "html.parser"
    )
    # reference photos: one block per subject, before the plots and the combinations
    blocks = soup.select("section.references div.subject")
    assert [b["data-subject"] for b in blocks] == ["a-circle", "b-square"]
    assert len(blocks[0].find_all("img")) == 2 and "1 photos and 1 scene photos" in blocks[0].h3.text
    assert [f.figcaption.text for f in blocks[0].find_all("figure")] == ["alone", "scene"]
    assert [f["title"] for f in blocks[0].find_all("figure")] == ["a-circle", "a circle beside a square"]
    assert len(blocks[1].find_all("img")) == REFERENCES_SHOWN and f"the first {REFERENCES_SHOWN} shown" in blocks[1].h3.text
    order = [s.get("class", [None])[0] for s in soup.body.find_all("section", recursive=False)]
    assert order.index("references") < order.index("plots") < order.index("combination")
    # settings: one table per part, every value shown
    tables = {t["data-section"]: {r.th.text: r.td.text for r in t.find_all("tr")} for t in soup.select("table.setting")}
    assert tables == {"composition": {"strategy": "token"}, "discovery": {"objective": "fit", "steps": "20"}}
    # each plot's title is printed once, by the page: its caption, not also inside the image
    captions = [f.text for f in soup.select("section.plots figcaption")]
    assert captions == ["Score by number of subjects", "Score distributions"]
    for _, fig in score_figures(entries):
        assert fig.get_suptitle() == "" and all(ax.get_title() not in captions for ax in fig.axes)

