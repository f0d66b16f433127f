"""Where a subject's class word sits in a prompt: its token rows (token composition, docs/composition.md).

Token-scoped concept neurons act only at the rows of the text states that belong to their
subject's class word. Those rows come from the model's own tokenizer, so any tokenizer and any
class word that splits into several tokens ("teddy bear" → 2 tokens) work: the word's token ids
are searched for as a run inside the prompt's ids. A word named twice ("a circle and a circle")
has one run per mention, taken in order.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

# A fast (Rust) tokenizer keeps its padding and truncation settings on the shared object and sets them
# per call, so two threads tokenizing with different padding (a bare word here, a padded prompt in the
# pipeline's encode_prompt) can each get the other's: a class word came back as 24 padded ids while a
# generation thread encoded its prompts. Every tokenizer call of the package holds this lock.
TOKENIZER_LOCK = threading.RLock()

__all__ = ["ClassWordNotInPromptError", "text_tokenizers", "word_rows", "word_token_ids"]


class ClassWordNotInPromptError(ValueError):
    """A prompt does not name a subject's class word where token composition needs it."""


def word_token_ids(tokenizer, word: str) -> list[int]:
    """The token ids `word` becomes inside a prompt (no BOS/EOS)."""
    with TOKENIZER_LOCK:
        ids = list(tokenizer(word, add_special_tokens=False).input_ids)
    if not ids:
        raise ValueError(f"class word {word!r} tokenizes to nothing; give a non-empty class word")
    return ids


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    # The padded, truncated ids are exactly the rows the UNet's cross-attention sees (loading.encode_prompts).
    with TOKENIZER_LOCK:
        return list(tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids)


def text_tokenizers(model) -> list:
    """Every tokenizer a model's prompts go through (SDXL: two, DiffusionModel.tokenizers)."""
    return list(getattr(model, "tokenizers", None) or [model.tokenizer])


def word_rows(tokenizer, prompt: str, words: Sequence[str]) -> list[tuple[int, ...]]:
    """Token rows of each word in `words`, in the order given.

    A word given n times gets its first n mentions in the prompt, left to right, so the subjects
    of "a circle and a circle" own one mention each. Raises ClassWordNotInPromptError when a word
    is not in the prompt (or not as often as it is given), or was cut off by the tokenizer's length.

    tokenizer: one tokenizer, or a list of them (SDXL's two, text_tokenizers): the UNet reads their
    states side by side, row by row, so a word's rows must be the same in each; they are found
    through every tokenizer and a disagreement is refused.
    """
    if isinstance(tokenizer, (list, tuple)):
        found = [word_rows(t, prompt, words) for t in tokenizer]
        if any(rows != found[0] for rows in found[1:]):
            raise ValueError(
                f"the model's tokenizers put the class words {list(words)} of prompt {prompt!r} at different token rows "
                f"({found}); token composition needs them at the same rows in every text encoder's states"
            )
        return found[0]
    ids = _prompt_ids(tokenizer, prompt)
    used: dict[str, int] = {}
    rows: list[tuple[int, ...]] = []
    for word in words:
        target = word_token_ids(tokenizer, word)
        runs = [i for i in range(len(ids) - len(target) + 1) if ids[i : i + len(target)] == target]
        mention = used.get(word, 0)
        if mention >= len(runs):
            named = f"{len(runs)} time{'s' if len(runs) != 1 else ''}"
            raise ClassWordNotInPromptError(
                f"prompt {prompt!r} names the class word {word!r} {named}, but {mention + 1} subject(s) of that class "
                "need it: token composition shuts each subject's neurons at its own class word, so the prompt must "
                f"say {word!r} once per subject (within the tokenizer's {tokenizer.model_max_length} tokens); "
                "fill the template's {subjects} slot with the subjects' class phrases, or use composition 'union'"
            )
        used[word] = mention + 1
        start = runs[mention]
        rows.append(tuple(range(start, start + len(target))))
    return rows
