"""The customize report in a real browser: headless Chromium over the DevTools protocol (headless_chromium.py).

Two pages: the demo's report.html (its screenshot is docs/report.png), and the report of a
1,000-combination run over photo-sized images, which must stay under REPORT_BUDGET_BYTES and
still decode every image it shows.
"""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from headless_chromium import open_page

pytestmark = pytest.mark.slow

# The page of a 1,000-combination run, best 200 shown (report_top's default), images 192 px,
# 10 subjects with 6 reference photos of 512 px: measured 1.23 MB; its images as stored are 71 MB.
REPORT_BUDGET_BYTES = 1_500_000

# In the page: wait for every image to decode, then say what is on it.
PAGE_FACTS = """
Promise.all([...document.images].map(i => i.decode().catch(() => null))).then(() => ({
  images: document.images.length,
  undecoded: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
  plots: [...document.querySelectorAll('section.plots figure.plot')].map(f => ({
    caption: f.querySelector('figcaption').textContent, width: f.querySelector('img').naturalWidth})),
  references: Object.fromEntries([...document.querySelectorAll('section.references div.subject')].map(
    d => [d.dataset.subject, [...d.querySelectorAll('img')].filter(i => i.naturalWidth > 0).length])),
  settings: Object.fromEntries([...document.querySelectorAll('table.setting')].map(t => [t.dataset.section,
    Object.fromEntries([...t.querySelectorAll('tr')].map(r => [r.cells[0].textContent, r.cells[1].textContent]))])),
  grids: document.querySelectorAll('section.combination div.image-grid').length,
  headings: [...document.querySelectorAll('h1, h2, h3, figcaption, caption')].map(e => e.textContent),
}))
"""


def test_the_demo_report_renders_in_chromium(demo_run, tmp_path):
    report = demo_run["workdir"] / "report.html"
    started = time.perf_counter()
    with open_page(report.as_uri()) as page:
        facts = page.evaluate(PAGE_FACTS)
        shot = page.screenshot()
    print(f"demo report in Chromium: {time.perf_counter() - started:.1f} s, {report.stat().st_size} bytes")
    subjects = demo_run["subjects"]
    # 4 subjects: 14 combinations × 2 prompts, each a grid of 2 seeds; 8 reference photos each; 2 plots
    assert facts["grids"] == 28
    assert facts["undecoded"] == [] and facts["images"] == 28 * 8 + 8 * len(subjects) + 2
    assert [p["caption"] for p in facts["plots"]] == ["Score by number of subjects", "Score distributions"]
    assert all(p["width"] > 0 for p in facts["plots"])
    assert facts["references"] == {s: 8 for s in subjects}
    assert facts["settings"]["composition"]["strategy"] == "token"
    assert facts["settings"]["discovery"]["objective"] == "gate" and facts["settings"]["discovery"]["scope"] == "word"
    # a plot's title is printed once on the page (its caption)
    assert facts["headings"].count("Score by number of subjects") == 1

    image = Image.open(io.BytesIO(shot))
    assert image.size == (1200, 1800)
    assert np.asarray(image.convert("L")).std() > 10  # a rendered page, not a blank one
    (tmp_path / "report.png").write_bytes(shot)
    if target := os.environ.get("CONES_REPORT_SCREENSHOT"):  # docs/report.png is made this way
        shutil.copyfile(tmp_path / "report.png", target)


def _photo(side: int, seed: int) -> bytes:
    """A photo-sized PNG with detail at every scale (value noise), as hard to compress as a photo."""
    rng = np.random.default_rng(seed)
    pixels = np.full((side, side, 3), 128.0)
    for cells, weight in ((3, 70.0), (12, 35.0), (48, 18.0), (side, 9.0)):
        coarse = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        pixels += weight * (np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), np.float64) / 128.0 - 1.0)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _thousand_combination_run(root) -> tuple[str, list[str]]:
    """A catalog as a 1,000-combination run leaves it: 10 subjects with 6 reference photos each, their
    masks, one 192 px image per combination and its scores. Returns (catalog URI, generation ids)."""
    from grid_oracle import enumerate_combinations

    from catalog import ClipScore, Generation, SubjectImage, load_catalog
    from cones_tasks.neurons.masks import ConceptMask
    from cones_tasks.neurons.space import NeuronSpace
    from cones_tasks.toyworld.architecture import build_unet

    catalog = load_catalog(str(root / "catalog"))
    space = NeuronSpace.from_unet(build_unet(seed=0))
    catalog.write_model(space, source="test")
    words = {f"subject-{i}": ("dog", "cat", "teapot", "vase", "backpack")[i % 5] for i in range(10)}
    masks = {}
    for i, (subject, word) in enumerate(words.items()):
        catalog.write_subject(subject, class_word=word)
        photos = [_photo(512, 1000 * i + j) for j in range(6)]
        catalog.write_subject_images(subject, [
            SubjectImage(subject, f"{i}-{j}", catalog.put_bytes(p, suffix=".png"), 512, 512) for j, p in enumerate(photos)
        ])
        masks[subject] = catalog.write_mask(subject=subject, mask=ConceptMask.from_indices(space, [i, 20 + i]), params={})
    templates = ["a photo of {subjects}", "{subjects} on the beach", "{subjects} in the snow", "{subjects} at night",
                 "a painting of {subjects}", "{subjects} in a kitchen"]
    combos = list(enumerate_combinations(words, max_k=3, templates=templates, seeds=[0]))[:1000]  # 175 subsets × 6
    assert len(combos) == 1000
    rng = np.random.default_rng(0)
    generations, scores = [], []
    for n, combo in enumerate(combos):
        g = Generation(subjects=combo.subjects, prompt=combo.prompt, seed=combo.seed,
                       image_uri=catalog.put_bytes(_photo(192, n), suffix=".png"), model_fingerprint=space.fingerprint,
                       mask_ids=tuple(masks[s] for s in combo.subjects), params={"steps": 25})
        generations.append(g)
        scores += [ClipScore(g.key(), "image_alignment", s, float(rng.uniform(0.2, 0.9)), "clip") for s in combo.subjects]
        scores.append(ClipScore(g.key(), "text_alignment", combo.prompt, float(rng.uniform(0.1, 0.4)), "clip"))
    catalog.write_generations(generations)
    catalog.write_clip_scores(scores)
    return catalog.uri, [g.key() for g in generations]


def test_the_report_of_a_1000_combination_run_stays_small_and_every_image_decodes(tmp_path):
    from catalog import load_catalog
    from flows.customize import write_report

    started = time.perf_counter()
    catalog_uri, ids = _thousand_combination_run(tmp_path)
    built = time.perf_counter()
    uri = write_report.fn(catalog_uri, ids, {"subjects": 10}, 200, {"composition": {"strategy": "token"}})
    page_bytes = load_catalog(catalog_uri).get_bytes(uri)
    rendered = time.perf_counter()
    stored = sum(len(load_catalog(catalog_uri).get_bytes(u)) for u in
                 load_catalog(catalog_uri).query("SELECT image_uri FROM generations").column("image_uri").to_pylist())
    print(f"1,000-combination report: {len(page_bytes)} bytes (images as stored: {stored} bytes); "
          f"catalog {built - started:.1f} s, report {rendered - built:.1f} s")
    assert len(page_bytes) < REPORT_BUDGET_BYTES

    report = tmp_path / "report.html"
    report.write_bytes(page_bytes)
    with open_page(report.as_uri()) as page:
        facts = page.evaluate(PAGE_FACTS)
    assert facts["grids"] == 200  # report_top's default; the plots cover all 1,000
    assert facts["undecoded"] == [] and facts["images"] == 200 + 10 * 6 + 2
    assert facts["references"] == {f"subject-{i}": 6 for i in range(10)}
    assert "Combinations (the best 200 of 1000)" in facts["headings"]
