"""Train the toy CLIP: a small open_clip model on toy image–caption pairs.

Registered through `open_clip.add_model_config`, trained with open_clip's own `ClipLoss`, and
shipped in open_clip's local-model form (config JSON + safetensors), so the scorer loads it
with `open_clip.create_model_and_transforms(name, pretrained=<file>)` — the call that loads
real ViT-L/14 weights.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cones_tasks.toyworld.batches import random_batch
from cones_tasks.toyworld.world import RESOLUTION

TOY_CLIP_NAME = "cones-toy-clip"
WEIGHTS_FILE = "open_clip_model.safetensors"
# open_clip's BPE tokenizer has 49,408 tokens; a 64-wide embedding table is most of the model,
# so weights ship in fp16 to stay under 10 MB (they load into fp32 parameters).
TOY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": RESOLUTION, "patch_size": 4, "width": 96, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS_CFG = {"size": RESOLUTION, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "shortest"}


# Mostly single objects with full captions: zero-shot shape needs captions whose every word
# describes the one object in view (a 600-step run on the diffusion model's mix of partial,
# multi-object captions reached only 0.83 shape accuracy).
CLIP_OBJECT_COUNTS = {1: 0.7, 2: 0.3}


@dataclass(frozen=True)
class TrainClipParams:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


def write_clip_config(folder: Path) -> None:
    """Both forms: `<name>.json` for add_model_config, `open_clip_config.json` for `local-dir:`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TOY_CLIP_NAME}.json").write_text(json.dumps(TOY_CLIP_CONFIG, indent=2))
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TOY_CLIP_CONFIG, "preprocess_cfg": PREPROCESS_CFG}, indent=2)
    )


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] → normalised float [B, 3, H, W], as PREPROCESS_CFG does at native size."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def train_toy_clip(out: str | Path, params: TrainClipParams = TrainClipParams(), *, progress: bool = True) -> dict:
    import open_clip
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file

    out = Path(out)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_config(Path(tmp))
        open_clip.add_model_config(Path(tmp) / f"{TOY_CLIP_NAME}.json")
        model = open_clip.create_model(TOY_CLIP_NAME)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP_NAME)
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=params.lr, total_steps=params.steps, pct_start=0.1)
    start = time.perf_counter()
    losses = []
    for _ in tqdm(range(params.steps), desc="train toy clip", disable=not progress):
        images, captions = random_batch(rng, params.batch_size, p_full=0.8, object_counts=CLIP_OBJECT_COUNTS)
        image_features, text_features, logit_scale = model(images_to_tensor(images), tokenizer(captions))
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    write_clip_config(out)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / WEIGHTS_FILE)
    log = {"params": asdict(params), "wall_s": time.perf_counter() - start, "threads": torch.get_num_threads(),
           "final_loss": float(np.mean(losses[-20:])), "losses": losses}
    (out / "training_log.json").write_text(json.dumps(log))
    return log
