"""Which subject subsets a generation grid holds: all, sampled, balanced, or listed (docs/scale.md).

Subjects are numbered by their position in the sorted list of subject ids, so a subset is a
sorted row of int32 indices and its subject tuple is in sorted-id order, the order generation
ids hash (catalog.records.generation_id): the same subset gets the same id whichever way it
was chosen. Subsets travel in `Subsets` chunks (flat indices + row offsets, rows may differ in
length), so a grid of any size is planned a chunk at a time.

Sampling draws each k-subset with Floyd's algorithm (one pass of k random draws per row, no
rejection inside a row; Bentley & Floyd, "A sample of brilliance", CACM 1987), many rows at
once with numpy, and keeps the first occurrence of each: the first N distinct subsets of an
i.i.d. uniform stream are a uniform sample without replacement. Nothing enumerates the
C(n, k) subsets unless at least half of them are wanted anyway.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cones_tasks.ingest import validate_subject_id  # listed ids go into generation ids and catalog rows


class CombinationRowError(ValueError):
    """A listed combination that cannot be generated; the message names the row."""


@dataclass(frozen=True)
class Subsets:
    """Rows of subject indices: row i is values[offsets[i]:offsets[i + 1]], sorted, no repeats."""

    values: np.ndarray  # int32 [total]
    offsets: np.ndarray  # int64 [rows + 1]

    @classmethod
    def fixed(cls, rows: np.ndarray) -> Subsets:
        """From a [rows, k] array of sorted rows."""
        m, k = rows.shape
        return cls(np.ascontiguousarray(rows, dtype=np.int32).ravel(), np.arange(m + 1, dtype=np.int64) * k)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self) -> list[tuple[int, ...]]:
        """As tuples (small chunks and tests only)."""
        return [tuple(int(v) for v in self.values[a:b]) for a, b in itertools.pairwise(self.offsets)]


# ------------------------------------------------------------------ all


def all_subsets(n: int, ks: Sequence[int], *, chunk_rows: int) -> Iterator[Subsets]:
    """Every k-subset of range(n) for k in ks, ascending k, lexicographic within k (itertools order)."""
    for k in ks:
        it = itertools.combinations(range(n), k)
        while True:
            flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(it, chunk_rows)), dtype=np.int32)
            if flat.size == 0:
                break
            yield Subsets.fixed(flat.reshape(-1, k))


# ------------------------------------------------------------------ sampled


def _floyd_rows(n: int, k: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """[m, k] sorted rows, each a uniform random k-subset of range(n) (Floyd's algorithm, vectorised over rows)."""
    rows = np.empty((m, k), dtype=np.int32)
    for j, top in enumerate(range(n - k, n)):
        draw = rng.integers(0, top + 1, size=m, dtype=np.int64).astype(np.int32)
        if j:
            taken = (rows[:, :j] == draw[:, None]).any(axis=1)
            draw[taken] = top  # Floyd: a value already in the row is replaced by `top`, never drawn before
        rows[:, j] = draw
    rows.sort(axis=1)
    return rows


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """One comparable key per row (its bytes): equal keys, equal rows."""
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    return rows.view(np.dtype((np.void, 4 * rows.shape[1]))).ravel()


def sample_subsets(n: int, k: int, count: int, *, rng: np.random.Generator) -> np.ndarray:
    """[count, k] int32: `count` distinct k-subsets of range(n), uniform without replacement, in draw order."""
    total = math.comb(n, k)
    if not 1 <= k <= n:
        raise ValueError(f"cannot draw {k}-subsets of {n} subjects")
    if count > total:
        raise ValueError(f"asked for {count:,} distinct {k}-subsets of {n} subjects; there are only {total:,}")
    if 2 * count >= total:  # at least half of them: enumerating costs no more than the answer itself
        every = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)), dtype=np.int32)
        return every.reshape(-1, k)[rng.choice(total, size=count, replace=False)]  # in random order, like a draw
    kept: list[np.ndarray] = []
    seen = np.empty(0, dtype=np.dtype((np.void, 4 * k)))  # sorted keys of the rows kept so far
    have = 0
    while have < count:
        need = count - have
        # Expected share of fresh rows is ≥ 1/2 here (count < total/2); draw a margin to finish in ~1 round.
        rows = _floyd_rows(n, k, need + need // 4 + 64, rng)
        keys = _row_keys(rows)
        _, first = np.unique(keys, return_index=True)
        first.sort()  # first occurrence of each key, in draw order
        if seen.size:
            pos = np.searchsorted(seen, keys[first])
            fresh = (pos == seen.size) | (seen[np.minimum(pos, seen.size - 1)] != keys[first])
            first = first[fresh]
        first = first[:need]
        kept.append(rows[first])
        seen = np.sort(np.concatenate([seen, keys[first]]))
        have += len(first)
    return np.concatenate(kept)


# ------------------------------------------------------------------ balanced


def balanced_subsets(n: int, ks: Sequence[int], count: int, *, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` distinct k-subsets for each k in ks in which every subject appears equally often, ±1.

    The slots of all rows, k by k, are filled from back-to-back random permutations of the
    subjects, so over the whole sample each subject's count is ⌊s/n⌋ or ⌈s/n⌉ (s slots). A row
    that repeats a subject (where two permutations meet) or repeats an earlier row is repaired by
    swapping one of its subjects with one in a random other row: a swap keeps every count.
    """
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"cannot draw {k}-subsets of {n} subjects")
        if count > math.comb(n, k):
            raise ValueError(f"asked for {count:,} distinct {k}-subsets of {n} subjects; there are only {math.comb(n, k):,}")
    slots = count * sum(ks)
    perms = -(-slots // n)
    sequence = np.concatenate([rng.permutation(n).astype(np.int32) for _ in range(perms)])[:slots]
    blocks, start = [], 0
    for k in ks:
        blocks.append(sequence[start : start + count * k].reshape(count, k).copy())
        start += count * k
    for block in blocks:
        block.sort(axis=1)
    _repair(blocks, rng)
    return blocks


def _bad_rows(block: np.ndarray) -> np.ndarray:
    repeats = (block[:, 1:] == block[:, :-1]).any(axis=1) if block.shape[1] > 1 else np.zeros(len(block), bool)
    _, first = np.unique(_row_keys(block), return_index=True)
    later = np.ones(len(block), bool)
    later[first] = False
    return np.flatnonzero(repeats | later)


def _repair(blocks: list[np.ndarray], rng: np.random.Generator) -> None:
    """Swap subjects between each bad row and random good rows until every row is valid (counts unchanged)."""
    pending = {(b, int(r)) for b, block in enumerate(blocks) for r in _bad_rows(block)}
    if not pending:
        return

    def key(row: np.ndarray) -> bytes:
        return np.ascontiguousarray(row, dtype=np.int32).tobytes()

    good = [{key(row) for r, row in enumerate(block) if (b, r) not in pending} for b, block in enumerate(blocks)]
    sizes = np.array([len(block) for block in blocks], dtype=np.float64)
    for b, r in sorted(pending):
        for _ in range(100_000):
            ob = int(rng.choice(len(blocks), p=sizes / sizes.sum()))
            orow = int(rng.integers(len(blocks[ob])))
            if (ob, orow) in pending:
                continue
            mine, theirs = blocks[b][r].copy(), blocks[ob][orow].copy()
            i, j = int(rng.integers(len(mine))), int(rng.integers(len(theirs)))
            mine[i], theirs[j] = theirs[j], mine[i]
            mine.sort()
            theirs.sort()
            old = key(blocks[ob][orow])
            good[ob].discard(old)
            if (
                _distinct(mine) and _distinct(theirs) and key(mine) not in good[b] and key(theirs) not in good[ob]
                and not (ob == b and key(mine) == key(theirs))
            ):
                blocks[b][r], blocks[ob][orow] = mine, theirs
                good[b].add(key(mine))
                good[ob].add(key(theirs))
                pending.discard((b, r))
                break
            good[ob].add(old)
        else:
            raise ValueError("cannot balance this sample: too many combinations asked of too few subjects")


def _distinct(row: np.ndarray) -> bool:
    return bool(np.all(row[1:] != row[:-1]))


# ------------------------------------------------------------------ listed


class SeenRows:
    """Rows met so far in a listed grid, to refuse a combination listed twice (memory: 4·max_k bytes a row)."""

    def __init__(self, max_k: int) -> None:
        self.width = max_k
        self._keys = np.empty(0, dtype=np.dtype((np.void, 4 * max_k)))
        self._rows = np.empty(0, dtype=np.int64)  # row number of each key, same order

    def first_row(self, rows: Subsets, row_numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add `rows`; returns (index into rows of each repeat, row number of its first listing)."""
        padded = np.full((len(rows), self.width), -1, dtype=np.int32)
        lengths = np.diff(rows.offsets)
        cols = np.arange(len(rows.values)) - np.repeat(rows.offsets[:-1], lengths)
        padded[np.repeat(np.arange(len(rows)), lengths), cols] = rows.values
        keys = _row_keys(padded)
        order = np.argsort(keys, kind="stable")
        keys_sorted = keys[order]
        dup_within = np.zeros(len(rows), bool)
        dup_within[order[1:]] = keys_sorted[1:] == keys_sorted[:-1]
        first_of = np.empty(len(rows), np.int64)
        # row number of the first occurrence within the chunk, for repeats inside it
        group_start = np.maximum.accumulate(np.where(np.r_[True, keys_sorted[1:] != keys_sorted[:-1]], np.arange(len(rows)), 0))
        first_of[order] = row_numbers[order[group_start]]
        repeat = dup_within.copy()
        if self._keys.size:
            pos = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
            earlier = self._keys[pos] == keys
            first_of[earlier] = self._rows[pos[earlier]]
            repeat |= earlier
        fresh = ~repeat
        merged = np.concatenate([self._keys, keys[fresh]])
        merged_rows = np.concatenate([self._rows, row_numbers[fresh]])
        order = np.argsort(merged, kind="stable")
        self._keys, self._rows = merged[order], merged_rows[order]
        where = np.flatnonzero(repeat)
        return where, first_of[where]


def listed_subsets(
    values: Sequence[str], offsets: np.ndarray, *, ids: Sequence[str], max_k: int, first_row: int = 1,
    seen: SeenRows | None = None,
) -> Subsets:
    """Listed combinations (row i: subject ids values[offsets[i]:offsets[i+1]]) as sorted index rows.

    `ids` are the grid's subject ids, sorted; rows are numbered from `first_row` in messages.
    Refuses, naming the row: an empty row, more than `max_k` subjects, a subject id not in
    `ids`, a subject twice in one row, and (given `seen`) a combination listed before.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    rows = len(lengths)

    def row_text(i: int) -> str:
        return f"row {first_row + i} {list(values[offsets[i]:offsets[i + 1]])}"

    for i in np.flatnonzero((lengths < 1) | (lengths > max_k))[:1]:
        raise CombinationRowError(
            f"combination {row_text(int(i))}: has {lengths[i]} subjects; a combination needs 1 to max_k={max_k}"
        )
    index = {s: i for i, s in enumerate(ids)}
    flat = np.fromiter((index.get(v, -1) for v in values), dtype=np.int32, count=len(values))
    row_of = np.repeat(np.arange(rows), lengths)
    if (unknown := np.flatnonzero(flat < 0)).size:
        i = int(row_of[unknown[0]])
        raise CombinationRowError(
            f"combination {row_text(i)}: subject {values[unknown[0]]!r} is not one of the grid's {len(ids)} subjects"
        )
    order = np.lexsort((flat, row_of))  # sort within each row
    flat = flat[order]
    same = (flat[1:] == flat[:-1]) & (row_of[1:] == row_of[:-1])
    if (twice := np.flatnonzero(same)).size:
        i = int(row_of[twice[0]])
        raise CombinationRowError(f"combination {row_text(i)}: names subject {ids[flat[twice[0]]]!r} twice")
    subsets = Subsets(flat, offsets - offsets[0])
    if seen is not None and rows:
        where, first = seen.first_row(subsets, np.arange(first_row, first_row + rows))
        if where.size:
            raise CombinationRowError(f"combination {row_text(int(where[0]))}: the same combination as row {first[0]}")
    return subsets


# ------------------------------------------------------------------ config checks

COMBINATION_FILE_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")


def check_listed(rows: Sequence[Sequence[str]], *, ids: Sequence[str] | None, max_k: int) -> None:
    """Refuse, naming the row, a listed combination that cannot be generated (see `listed_subsets`).

    ids=None checks only what needs no subject list (sizes, repeats, id syntax).
    """
    if not rows:
        raise CombinationRowError("the list of combinations is empty; list at least one, or use 'all'")
    values = [v for row in rows for v in row]
    for r, row in enumerate(rows):
        for v in row:
            try:
                validate_subject_id(v)
            except ValueError as exc:
                raise CombinationRowError(f"combination row {r + 1} {list(row)}: {exc}") from None
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    listed_subsets(values, offsets, ids=sorted(set(values)) if ids is None else ids, max_k=max_k, seen=SeenRows(max_k))


def check_subject_count(spec: object, *, n: int) -> None:
    """Refuse a sampled or balanced grid that asks for more distinct k-subsets than n subjects have."""
    count = getattr(spec, "sample", None) or getattr(spec, "balanced", None)
    for k in getattr(spec, "k", ()):
        if k > n:
            raise ValueError(f"combinations.k={k} but the grid has only {n} subjects")
        if count and count > math.comb(n, k):
            raise ValueError(f"{count:,} distinct {k}-subsets asked of {n} subjects; there are only {math.comb(n, k):,}")


# ------------------------------------------------------------------ one grid's subsets, chunk by chunk


def grid_subsets(
    spec: object,
    *,
    n: int,
    ids: Sequence[str],
    max_k: int,
    chunk_rows: int,
    listed_rows: Iterable[tuple[Sequence[str], np.ndarray]] | None = None,
) -> Iterator[Subsets]:
    """The subsets a grid's `combinations` names over `ids` (sorted, n of them), `chunk_rows` rows at a time.

    spec: "all", a sampled or balanced spec (objects with sample/balanced, k, seed), a list of
    subject-id rows, or (for a file) None with its rows in `listed_rows` as (ids, offsets) batches.
    Each k of a sample draws from its own seed stream ([seed, k]): adding a k leaves the others' draws as they were.
    """
    if spec == "all":
        yield from all_subsets(n, range(1, min(max_k, n) + 1), chunk_rows=chunk_rows)
        return
    if hasattr(spec, "sample"):
        for k in spec.k:
            yield from _chunks(sample_subsets(n, k, spec.sample, rng=np.random.default_rng([spec.seed, k])), chunk_rows)
        return
    if hasattr(spec, "balanced"):
        for block in balanced_subsets(n, spec.k, spec.balanced, rng=np.random.default_rng(spec.seed)):
            yield from _chunks(block, chunk_rows)
        return
    if listed_rows is None:  # an explicit list from the config
        rows = list(spec)
        listed_rows = [
            ([v for row in rows[i : i + chunk_rows] for v in row],
             np.concatenate([[0], np.cumsum([len(r) for r in rows[i : i + chunk_rows]])]))
            for i in range(0, len(rows), chunk_rows)
        ]
    seen, first_row = SeenRows(max_k), 1
    for values, offsets in listed_rows:
        subsets = listed_subsets(values, offsets, ids=ids, max_k=max_k, first_row=first_row, seen=seen)
        first_row += len(subsets)
        if len(subsets):
            yield subsets


def _chunks(rows: np.ndarray, chunk_rows: int) -> Iterator[Subsets]:
    for start in range(0, len(rows), chunk_rows):
        yield Subsets.fixed(rows[start : start + chunk_rows])


def grid_subset_count(spec: object, *, n: int, max_k: int, listed: int | None = None) -> int:
    """How many subsets `grid_subsets` yields (listed: the row count of a combinations file)."""
    if spec == "all":
        return sum(math.comb(n, k) for k in range(1, min(max_k, n) + 1))
    if hasattr(spec, "sample") or hasattr(spec, "balanced"):
        return (getattr(spec, "sample", None) or spec.balanced) * len(spec.k)
    return len(spec) if listed is None else listed
