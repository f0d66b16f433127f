"""The comparison table: its storage figures are the bytes written, its SD-1.5 figures follow SD-1.5's shapes,
and the run leaves the toy model as it was (tiny sizes: bookkeeping, not the claims)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cones_lab.compare import COLUMNS, CompareParams, compare_toy, markdown_table, sd15_bytes_per_concept
from cones_lab.baselines.lora import LoraParams
from cones_lab.baselines.training import FineTuneParams
from cones_tasks.neurons.objectives import FitObjective
from cones_lab.validate import ValidateParams
from cones_tasks.toyworld.assets import TOY_MODEL_DIR

TOY_MODEL = TOY_MODEL_DIR  # shipped with the package: a missing model is a failure, not a skip

# SD-1.5's cross-attention (Rombach et al. 2022; the UNet's published config): 16 attn2 modules, text width 768,
# output widths 320 ×(2 down + 3 up), 640 ×(2 + 3), 1280 ×(2 down + 1 mid + 3 up) -> 32 K/V matrices.
SD15_OUT = [320] * 5 + [640] * 5 + [1280] * 6
SD15_KV = 2 * 768 * sum(SD15_OUT)  # 19,169,280 weights


def test_sd15_storage_follows_sd15_shapes():
    assert SD15_KV == 19_169_280
    dense = sd15_bytes_per_concept("dense_kv")
    assert 4 * SD15_KV < dense < 4 * SD15_KV + 16_384  # fp32 ΔW per weight plus the header
    rank = 4
    lora_weights = 2 * sum(rank * (768 + out) for out in SD15_OUT)
    lora = sd15_bytes_per_concept("lora", rank=rank)
    assert 4 * lora_weights < lora < 4 * lora_weights + 16_384
    # a Cones mask costs its indices: ~0.2 % of the neurons is far below either
    cones = sd15_bytes_per_concept("cones", fraction=0.002)
    assert 1_000 < cones < 0.01 * dense and sd15_bytes_per_concept("cones", fraction=0.02) > 5 * cones


def test_compare_rows_storage_is_the_bytes_written(tmp_path):
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS

    torch.set_num_threads(1)
    model = load_diffusion_model(TOY_MODEL)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    sampling = ValidateParams(images_per_line=3, select_images_per_line=2, sample_steps=1, reference_images=2,
                              scene_references=2, multi_sizes=(2,), ceilings=False, reversed_order=False,
                              prompt_modes=("context",))
    params = CompareParams(
        sampling=sampling, cones=FitObjective(steps=2, rounds=1, batch_size=2),
        dense_kv=(FineTuneParams(steps=2, batch_size=2), FineTuneParams(steps=3, batch_size=2)),
        lora=(LoraParams(steps=2, batch_size=2, rank=2),),
    )
    written: dict[str, int] = {}

    def store(key: str, blob: bytes) -> int:
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        written[key] = path.stat().st_size
        return written[key]

    subjects = TOY_SUBJECTS[:2]
    out = compare_toy(model, subjects, judge, store=store, params=params)
    assert [r["method"] for r in out["rows"]] == ["cones", "dense_kv", "lora"]
    assert all(tuple(r) == COLUMNS for r in out["rows"])
    # every figure's storage is the mean size of the files on disk for that method's single-subject concepts
    for row in out["rows"]:
        suffix = ".mask" if row["method"] == "cones" else ".safetensors"
        files = [tmp_path / row["method"] / f"{s.id}{suffix}" for s in subjects]
        assert row["bytes_per_concept"] == np.mean([f.stat().st_size for f in files])
        assert all(0.0 <= row[c] <= 1.0 for c in ("single_hit", "context", "crosstalk", "multi_2"))
        assert row["seconds_per_concept"] > 0
    joint = sorted((tmp_path / "dense_kv" / "joint").iterdir())
    assert [p.name for p in joint] == [f"{subjects[0].id}+{subjects[1].id}.safetensors"]  # one per combination
    dense = out["details"]["dense_kv"]
    assert len(dense["selection"]) == 2 and dense["steps_per_concept"] in (2, 3)  # chosen on the selection seeds
    assert dense["multi_mode"] in ("summed", "joint") and set(dense["multi_modes"]) == {"summed", "joint"}
    assert out["details"]["lora"]["selection"] == []  # one candidate: nothing to choose
    assert out["rows"][1]["bytes_per_concept"] > out["rows"][2]["bytes_per_concept"] > out["rows"][0]["bytes_per_concept"]
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())
    table = markdown_table(out)
    assert table.count("\n") == 5 and "| dense_kv |" in table


@pytest.mark.slow  # Cones' default discovery (200 fit steps per subject) and a fine-tune per combination: minutes on CPU
def test_cli_compare_prints_the_table_as_json(tmp_path):
    import json

    from typer.testing import CliRunner

    from cones_cli.app import app

    args = ["toy", "compare", "--subjects", "2", "--quick", "--n", "2", "--select-n", "1", "--steps", "1", "--out", str(tmp_path),
            "--markdown", str(tmp_path / "table.md"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["method"] for r in rows] == ["cones", "dense_kv", "lora"] and all(tuple(r) == COLUMNS for r in rows)
    sizes = [p.stat().st_size for p in sorted((tmp_path / "lora").glob("*.safetensors"))]
    assert rows[2]["bytes_per_concept"] == np.mean(sizes)
    assert (tmp_path / "table.md").read_text().startswith("| method |")
