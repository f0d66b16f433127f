"""The toy model's training data: images, caption token ids, noise and timesteps.

Two streams, both seeded:
- "per-step" (TrainingBatches): step `s` of a run with seed `k` sees the batch drawn from `(k, s)`
  alone, so the data does not depend on how many DataLoader workers render it (a GPU run needs
  many; one process renders ~10k images/s) nor on where a resumed run restarts.
- "sequential" (sequential_batches): one generator per process, drawn in order, seeded by the
  step it starts at. The shipped 5,000-step model was trained on it, so `make toy-model` replays it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from cones_tasks.toyworld.batches import OBJECT_COUNT_WEIGHTS, random_batch
from cones_tasks.toyworld.render import CROWD_RADIUS
from cones_tasks.toyworld.tokenizer import BOS, EOS, MAX_LENGTH, build_vocab_and_merges, write_tokenizer
from cones_tasks.toyworld.world import vocabulary


@lru_cache(maxsize=1)
def _tokenizer():
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_tokenizer(tmp))


@lru_cache(maxsize=1)
def word_ids() -> dict[str, int]:
    """Each toy word's (and BOS/EOS's) single token id in the shipped tokenizer."""
    vocab, _ = build_vocab_and_merges(vocabulary())
    return {BOS: vocab[BOS], EOS: vocab[EOS]} | {w: vocab[w + "</w>"] for w in vocabulary()}


def _ids(caption: str) -> list[int]:
    # The slow CLIPTokenizer costs ~2 ms a caption, and crowded scenes' captions rarely repeat: at
    # batch 512 it starved a GPU run at 3 steps/s. Every toy word is one token (tokenizer.py), so a
    # caption of toy words is a lookup; tests/cones_tasks/toyworld/test_training_data.py checks it equals the tokenizer.
    table, words = word_ids(), caption.split()
    if not all(w in table for w in words) or len(words) > MAX_LENGTH - 2:
        return _tokenizer()(caption, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    ids = [table[BOS], *(table[w] for w in words), table[EOS]]
    return ids + [table[EOS]] * (MAX_LENGTH - len(ids))


def caption_ids(captions: list[str]) -> torch.Tensor:
    """Token ids [B, MAX_LENGTH] from the shipped toy tokenizer, padded as the loader pads."""
    return torch.tensor([_ids(c) for c in captions], dtype=torch.long)


class TrainingBatches(torch.utils.data.Dataset):
    """Index = step: (uint8 images [B,H,W,3], ids [B,T], noise [B,3,H,W], timesteps [B])."""

    def __init__(self, seed: int, batch_size: int, num_train_timesteps: int, *, p_empty: float,
                 object_counts: dict[int, float] = OBJECT_COUNT_WEIGHTS, object_order: str = "random",
                 crowd_radius: tuple[float, float] = CROWD_RADIUS):
        self.seed, self.batch_size, self.num_train_timesteps, self.p_empty = seed, batch_size, num_train_timesteps, p_empty
        self.object_counts, self.object_order, self.crowd_radius = object_counts, object_order, crowd_radius

    def __getitem__(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        images, captions = random_batch(rng, self.batch_size, p_empty=self.p_empty, object_counts=self.object_counts,
                                        object_order=self.object_order, crowd_radius=self.crowd_radius)
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return _with_noise(images, captions, g, self.num_train_timesteps)


DATA_STREAMS = ("per-step", "sequential")


def sequential_batches(seed: int, first_step: int, steps: int, batch_size: int, num_train_timesteps: int, *, p_empty: float,
                       object_counts: dict[int, float] = OBJECT_COUNT_WEIGHTS, object_order: str = "random",
                       crowd_radius: tuple[float, float] = CROWD_RADIUS):
    """The stream the first shipped toy model was trained on: one process, drawn in order."""
    rng = np.random.default_rng([seed, first_step])
    g = torch.Generator().manual_seed(seed * 1_000_003 + first_step)
    for _ in range(steps):
        images, captions = random_batch(rng, batch_size, p_empty=p_empty, object_counts=object_counts, object_order=object_order,
                                        crowd_radius=crowd_radius)
        yield _with_noise(images, captions, g, num_train_timesteps)


def _with_noise(images: np.ndarray, captions: list[str], g: torch.Generator, num_train_timesteps: int):
    """One training batch: images, caption ids, then noise and timesteps drawn from `g`, in that order."""
    noise = torch.randn((len(images), images.shape[-1], *images.shape[1:3]), generator=g)
    t = torch.randint(0, num_train_timesteps, (len(images),), generator=g)
    return torch.from_numpy(images), caption_ids(captions), noise, t
