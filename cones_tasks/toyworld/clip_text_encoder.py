"""The toy CLIP's text tower as a frozen transformers `CLIPTextModel`.

Stable Diffusion conditions on a *pretrained*, frozen text encoder whose per-token states already
carry meaning, and with a causal mask each token also carries the words before it: in "a red
circle and a blue square", the state at "square" knows it is the blue one. The random frozen
encoder (architecture.build_text_encoder) gives each token mostly its own word, which left the
toy model unable to bind colours to shapes in two-object prompts (pair.both 0.30 at 5,000 steps).

The toy CLIP (train_clip) is trained contrastively on the same world; its text tower is an
open_clip `TextTransformer` — pre-LN blocks, causal mask, final LayerNorm — which is CLIP's text
model, so its weights map one to one onto `CLIPTextModel`. Its vocabulary is open_clip's BPE
(49,408 tokens); the toy tokenizer's ids are remapped to the same words, which keeps the
shipped text encoder at a few kilobytes and the tokenizer the one the loader already reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from cones_tasks.toyworld.tokenizer import BOS, EOS, MAX_LENGTH, build_vocab_and_merges
from cones_tasks.toyworld.world import vocabulary


def text_encoder_from_toy_clip(weights: str | Path) -> CLIPTextModel:
    """A frozen `CLIPTextModel` over the toy tokenizer's vocabulary with the toy CLIP's text weights.

    `weights` is the toy CLIP's safetensors file; its model config (`<name>.json`, written beside
    it by train_clip) gives the tower's shape.
    """
    from open_clip.tokenizer import SimpleTokenizer
    from safetensors.torch import load_file

    weights = Path(weights)
    text_cfg = _text_config(weights.parent)
    if text_cfg["context_length"] < MAX_LENGTH:
        raise ValueError(
            f"the toy CLIP at {weights.parent} reads {text_cfg['context_length']} tokens but toy captions take "
            f"{MAX_LENGTH}; retrain it with `cones toy train-clip` (context_length >= {MAX_LENGTH})"
        )
    state = {k: v.float() for k, v in load_file(weights).items()}
    vocab, _ = build_vocab_and_merges(vocabulary())
    width, layers = text_cfg["width"], text_cfg["layers"]
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=int(width * text_cfg.get("mlp_ratio", 4.0)),
        num_hidden_layers=layers,
        num_attention_heads=text_cfg["heads"],
        max_position_embeddings=MAX_LENGTH,
        # open_clip's text tower uses exact GELU unless its config asks for QuickGELU
        hidden_act="quick_gelu" if text_cfg.get("quick_gelu") else "gelu",
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    model = CLIPTextModel(config)
    clip_ids = _clip_token_ids(vocab, SimpleTokenizer())
    mapped = {
        "embeddings.token_embedding.weight": state["token_embedding.weight"][clip_ids],
        "embeddings.position_embedding.weight": state["positional_embedding"][:MAX_LENGTH],
        "final_layer_norm.weight": state["ln_final.weight"],
        "final_layer_norm.bias": state["ln_final.bias"],
    }
    for i in range(layers):
        block, layer = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        # nn.MultiheadAttention packs q, k, v into one projection, in that order
        for part in ("weight", "bias"):
            q, k, v = state[block + f"attn.in_proj_{part}"].chunk(3)
            mapped |= {layer + f"self_attn.q_proj.{part}": q, layer + f"self_attn.k_proj.{part}": k,
                       layer + f"self_attn.v_proj.{part}": v}
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                mapped[layer + f"{ours}.{part}"] = state[block + f"{theirs}.{part}"]
    target = model.state_dict()
    prefix = "text_model." if "text_model.embeddings.token_embedding.weight" in target else ""  # transformers 4 nests
    missing = set(target) - {prefix + k for k in mapped}
    if missing:
        raise ValueError(f"no toy-CLIP weight for {sorted(missing)}; is {weights} an open_clip text tower?")
    model.load_state_dict({prefix + k: v for k, v in mapped.items()})
    model.requires_grad_(False)
    return model.eval()


def _text_config(folder: Path) -> dict:
    configs = [p for p in folder.glob("*.json") if "text_cfg" in json.loads(p.read_text())]
    if not configs:
        raise FileNotFoundError(f"no open_clip model config (a JSON with 'text_cfg') beside the weights in {folder}")
    return json.loads(configs[0].read_text())["text_cfg"]


def _clip_token_ids(vocab: dict[str, int], clip_tokenizer) -> torch.Tensor:
    """For each toy token id, the open_clip token id of the same word.

    Toy words are single tokens in both vocabularies; the toy vocabulary's sub-word symbols are
    never produced by its tokenizer (every word merges whole), so they borrow end-of-text.
    """
    ids = torch.full((len(vocab),), clip_tokenizer.eot_token_id, dtype=torch.long)
    ids[vocab[BOS]] = clip_tokenizer.sot_token_id
    for word in vocabulary():
        encoded = clip_tokenizer.encode(word)
        if len(encoded) != 1:
            raise ValueError(f"toy word {word!r} is {len(encoded)} CLIP tokens; the mapping needs one")
        ids[vocab[word + "</w>"]] = encoded[0]
    return ids
