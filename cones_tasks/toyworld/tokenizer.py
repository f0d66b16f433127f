"""A CLIP BPE tokenizer for the toy vocabulary, written as vocab.json + merges.txt.

The toy model ships a real `CLIPTokenizer` (what Stable Diffusion's loader expects), whose
merges build each toy word into a single token, so a caption tokenizes word by word.
"""

from __future__ import annotations

import json
from pathlib import Path

from cones_tasks.toyworld.world import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 24  # longest caption: 4 objects × 4 words + 3 "and" + "on <background>" + BOS/EOS = 23


def _symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + "</w>"]


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly merge the adjacent pair with the lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(p, float("inf")), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        rank, at = min(pairs)
        if rank == float("inf"):
            break
        first = (symbols[at], symbols[at + 1])
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == first:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Merges under which every word becomes exactly one token.

    A merge appended last has the lowest priority, so it only fires once no earlier merge
    applies: adding one never changes how an already-whole word is built.
    """
    vocab: dict[str, int] = {BOS: 0, EOS: 1}
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        for symbol in _symbols(word):
            vocab.setdefault(symbol, len(vocab))
    for word in words:
        while len(segments := _apply_bpe(_symbols(word), ranks)) > 1:
            pair = (segments[0], segments[1])
            ranks[pair] = len(ranks)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
    assert all(len(_apply_bpe(_symbols(w), ranks)) == 1 for w in words)
    return vocab, sorted(ranks, key=ranks.__getitem__)


def write_tokenizer(folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(vocabulary())
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2)
    )
    return folder
