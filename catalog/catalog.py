"""The catalog: typed writes of immutable Parquet commits, DuckDB reads (docs/catalog.md).

Writers never share a database file: every batch is one Parquet file, named by
a hash of its rows' primary keys and published atomically (catalog/store.py),
so writer processes never block each other and a repeated commit is a no-op.
Readers get a DuckDB connection with one view per table over a snapshot of the
live files (catalog/views.py) and the mask_* SQL functions (catalog/sqlfuncs.py),
locked down so that it opens nothing but the catalog's tables (catalog/readonly.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog import maskmath
from catalog.errors import (
    MaskShapeMismatchError,
    QueryError,
    SchemaError,
    UnknownMaskError,
    UnknownModelError,
    UnknownSubjectError,
)
from catalog.readonly import filter_expression, lock_down, read_only_statements
from catalog.records import (
    ClipScore,
    Generation,
    MaskLike,
    ModelInfo,
    NewMask,
    SpaceLike,
    StoredMask,
    Subject,
    SubjectImage,
    canonical_json,
    content_key,
    mask_id_for,
    params_hash,
)
from catalog.schema import PRIMARY_KEYS, SCHEMAS, TABLES
from catalog.sqlfuncs import register_mask_functions
from catalog.store import Store, TableFiles
from catalog.views import create_views, view_sql
from cones_tasks.codec import encode_indices

# Row groups of ~4 MB: rows are sorted by key, so min/max statistics let a
# point lookup read one small group (100,000 masks: ~140 MB of blobs) instead
# of decompressing a whole column (target: a point lookup ≤ 50 ms, `cones bench catalog`).
_ROW_GROUP_BYTES = 4 << 20
_ROW_GROUP_ROWS = (1024, 128 * 1024)


class Catalog:
    """Subjects, models, concept masks, generations and scores under one fsspec root."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Internal lookups (find_mask, referential checks) reuse one connection:
        # opening a DuckDB database costs ~30 ms, over the 50 ms point-lookup
        # budget (`cones bench catalog`). Views are rebuilt only when a table's files change.
        self._lookup_lock = threading.Lock()
        self._lookup_con: duckdb.DuckDBPyConnection | None = None
        self._lookup_pid = 0
        self._lookup_files: dict[str, TableFiles] = {}

    @property
    def uri(self) -> str:
        return self.store.uri

    def __repr__(self) -> str:
        return f"Catalog({self.uri!r})"

    # ================================================================ writes

    def write_model(self, space: SpaceLike, *, source: str, attention: str | None = None) -> str:
        """Register a model's neuron space (fingerprint, size, per-parameter layout)."""
        layers = [_entry(e) for e in space.entries]
        self.commit(
            "model_layers",
            [
                {"model_fingerprint": space.fingerprint, "name": n, "shape": list(s), "offset": o, "numel": k}
                for n, s, o, k in layers
            ],
        )
        # models last: a model visible to a reader implies its layers are visible.
        self.commit(
            "models",
            [
                {
                    "fingerprint": space.fingerprint,
                    "source": source,
                    "layout_hash": space.layout_hash,
                    "attention": attention or str(getattr(space, "attention", "cross")),
                    "neuron_count": int(space.size),
                }
            ],
        )
        return space.fingerprint

    def write_subject(self, id: str, *, class_word: str) -> str:
        if not id or not class_word:
            raise SchemaError("a subject needs a non-empty id and class_word (e.g. 'striped-yellow-triangle', 'triangle')")
        self.commit("subjects", [{"id": id, "class_word": class_word}])
        return id

    def write_subject_images(self, subject: str, images: Sequence[SubjectImage]) -> int:
        """Add reference images (already stored with put_bytes) to an existing subject."""
        self._require_subjects({subject} | {im.subject for im in images})
        rows = [
            {"subject": im.subject, "content_hash": im.content_hash, "uri": im.uri, "width": im.width, "height": im.height}
            for im in images
        ]
        return self.commit("subject_images", rows)

    def write_subject_captions(self, subject: str, captions: Mapping[str, str]) -> int:
        """Captions ({content hash: caption}) of reference images the subject already has."""
        self._require_subjects({subject})
        rows = [{"subject": subject, "content_hash": h, "caption": c} for h, c in captions.items()]
        return self.commit("subject_captions", rows) if rows else 0

    def write_subject_boxes(self, subject: str, boxes: Mapping[str, Sequence[float]]) -> int:
        """The subject's region ({content hash: (x0, y0, x1, y1)}) in reference images the subject already has."""
        self._require_subjects({subject})
        rows = [{"subject": subject, "content_hash": h, "box": [float(v) for v in b]} for h, b in boxes.items()]
        return self.commit("subject_boxes", rows) if rows else 0

    def write_mask(
        self, *, subject: str, mask: MaskLike, params: Mapping[str, Any], stats: Mapping[str, Any] | None = None
    ) -> str:
        return self.write_masks([NewMask(subject=subject, mask=mask, params=params, stats=stats or {})])[0]

    def write_masks(self, masks: Sequence[NewMask]) -> list[str]:
        """Write concept masks in one commit; returns their ids (content-derived)."""
        self._require_subjects({m.subject for m in masks})
        models = self._models({m.mask.space_fingerprint for m in masks})
        rows, ids = [], []
        for m in masks:
            fp = m.mask.space_fingerprint
            if fp not in models:
                raise UnknownModelError(
                    f"model {fp[:16]}… is not in the catalog; call write_model(space, source=...) before writing its masks"
                )
            if int(m.mask.size) != models[fp].neuron_count:
                raise MaskShapeMismatchError(
                    f"mask for subject {m.subject!r} has universe {m.mask.size} but model {fp[:16]}… has "
                    f"{models[fp].neuron_count} neurons; was it discovered on a different neuron space (attention=...)?"
                )
            idx = np.asarray(m.mask.indices, dtype=np.int64)
            ph = params_hash(m.params)
            mid = mask_id_for(m.subject, fp, ph)
            size = int(m.mask.size)
            rows.append(
                {
                    "mask_id": mid,
                    "subject": m.subject,
                    "model_fingerprint": fp,
                    "params": canonical_json(m.params),
                    "params_hash": ph,
                    "mask": encode_indices(idx, size),
                    "universe": size,
                    "neuron_count": int(idx.size),
                    "fraction": idx.size / size if size else 0.0,
                    "stats": canonical_json(m.stats),
                }
            )
            ids.append(mid)
        self.commit("concept_masks", rows)
        return ids

    def write_generations(self, generations: Sequence[Generation]) -> list[str]:
        """Write a batch of generated-image records in one commit; returns their ids."""
        self._require_subjects({s for g in generations for s in g.subjects})
        self._require_masks({m for g in generations for m in g.mask_ids})
        rows = [
            {
                "id": g.key(),
                "subjects": list(g.subjects),
                "prompt": g.prompt,
                "seed": int(g.seed),
                "image_uri": g.image_uri,
                "model_fingerprint": g.model_fingerprint,
                "mask_ids": list(g.mask_ids),
                "params": canonical_json(g.params),
            }
            for g in generations
        ]
        self.commit("generations", rows)
        return [r["id"] for r in rows]

    def write_grid_items(self, grid: str, *, start: int, generations: pa.Array) -> int:
        """Record that `generations[i]` sits at position `start + i` of grid `grid`, in one commit."""
        n = len(generations)
        table = pa.table({
            "grid": pa.repeat(pa.scalar(grid, pa.string()), n),
            "position": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "generation": pa.array(generations, pa.string()),
        })
        return self.commit("grid_items", table)

    def write_clip_scores(self, scores: Sequence[ClipScore]) -> int:
        """Write a batch of scores in one commit (not checked against generations: hot path)."""
        rows = [
            {"generation": s.generation, "metric": s.metric, "target": s.target, "value": float(s.value), "scorer": s.scorer}
            for s in scores
        ]
        return self.commit("clip_scores", rows)

    def put_bytes(self, data: bytes, *, suffix: str = "") -> str:
        """Store bytes under the catalog root, keyed by their sha256; returns a URI (idempotent)."""
        return self.store.put_blob(bytes(data), suffix=suffix)

    def get_bytes(self, uri: str) -> bytes:
        return self.store.get_blob(uri)

    def commit(self, table: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> int:
        """Write rows as one immutable Parquet file; returns the number of rows it holds.

        Rows are deduplicated by primary key (first wins); the file is named by a
        hash of the sorted keys, so re-committing the same keys is a no-op.
        """
        table_ = self._to_arrow(table, rows)
        if table_.num_rows == 0:
            return 0
        pk = PRIMARY_KEYS[table]
        table_ = _sorted_unique(table_, pk)
        self.store.publish_part(table, content_key(table, _keys_digest(table_, pk)), _parquet_bytes(table_))
        return table_.num_rows

    # ================================================================ reads

    def connect(self, tables: Sequence[str] | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with a view per table over the live files at this moment.

        The connection is sandboxed (catalog/readonly.py, `lock_down`): DuckDB opens no file
        outside the catalog's `tables/` folder, and no statement can change that.
        """
        wanted = list(tables or TABLES)
        unknown = set(wanted) - set(TABLES)
        if unknown:
            raise SchemaError(f"unknown tables {sorted(unknown)}; the catalog has {list(TABLES)}")
        con = duckdb.connect(":memory:")
        con.execute("SET enable_progress_bar = false")  # library output must not draw on the caller's terminal
        # Parquet files are immutable, so cached footers never go stale.
        con.execute("SET parquet_metadata_cache = true")
        if not self.store.local:
            con.register_filesystem(self.store.fs)
        register_mask_functions(con)
        # Tables not asked for get empty views: fewer listings for point lookups.
        snapshot = {t: self.store.snapshot(t) if t in wanted else TableFiles(base=(), tail=()) for t in TABLES}
        create_views(con, self.store, snapshot)
        lock_down(con, readable=[self.store.url(self.store.tables_root) + "/"])
        return con

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *, where: str | None = None
    ) -> pa.Table:
        """Run read-only SQL over the catalog views; returns the last statement's result.

        Every statement is checked first and runs on a locked-down connection
        (catalog/readonly.py; ReadOnlyViolationError names what was refused and why).
        Only the last one runs: the others, being read-only, cannot change its result.
        `where` keeps the rows for which one boolean SQL expression over the result's
        columns holds; DuckDB parses it as an expression, checked like the query.
        """
        with self._lookup(TABLES) as con:
            try:
                last = read_only_statements(con, sql)[-1]
                if where is None:
                    return con.sql(last, params=params).to_arrow_table()
                condition = filter_expression(con, where)
                return con.sql(last, params=params).filter(condition).to_arrow_table()
            except duckdb.Error as exc:  # the caller's SQL: a typed error, DuckDB's own words
                raise QueryError(str(exc)) from exc

    def present(self, table: str, column: str, keys: pa.Array) -> np.ndarray:
        """bool [len(keys)]: whether each key is in `table.column`, by one DuckDB join against `keys`.

        The keys are joined as an Arrow table, not spliced into the SQL as a list literal, so a
        million keys cost a hash join (docs/scale.md), not a million-element constant.
        """
        if table not in SCHEMAS or column not in SCHEMAS[table].names:
            raise SchemaError(f"no column {column!r} in table {table!r}")
        found = np.zeros(len(keys), dtype=bool)
        if len(keys) == 0:
            return found
        with self._lookup([table]) as con:
            con.register("__keys", pa.table({"k": keys, "i": pa.array(np.arange(len(keys), dtype=np.int64))}))
            try:
                rows = con.sql(f"SELECT i FROM __keys SEMI JOIN (SELECT {column} AS k FROM {table}) USING (k)").fetchnumpy()
            finally:
                con.unregister("__keys")
        found[rows["i"]] = True
        return found

    def read_table(self, table: str) -> pa.Table:
        con = self.connect([table])
        try:
            return con.sql(f"SELECT * FROM {table}").to_arrow_table()
        finally:
            con.close()

    def get_subject(self, id: str) -> Subject:
        rows = self._select("subjects", "SELECT id, class_word FROM subjects WHERE id = ?", [id])
        if not rows:
            raise UnknownSubjectError(f"subject {id!r} is not in the catalog; add it with write_subject or `cones ingest`")
        return Subject(**rows[0])

    def get_model(self, fingerprint: str) -> ModelInfo:
        models = self._models({fingerprint})
        if fingerprint not in models:
            raise UnknownModelError(f"model {fingerprint[:16]}… is not in the catalog; call write_model first")
        return models[fingerprint]

    def find_mask(self, *, subject: str, model_fingerprint: str, params_hash: str) -> StoredMask | None:
        """The mask discovered for this subject, model and parameters, or None (a cache check)."""
        found = self._masks_where("mask_id = ?", [mask_id_for(subject, model_fingerprint, params_hash)])
        return found[0] if found else None

    def subject_masks(self, subject: str) -> list[StoredMask]:
        """Every mask of `subject` (any model, any discovery parameters), ordered by mask id."""
        return sorted(self._masks_where("subject = ?", [subject]), key=lambda m: m.mask_id)

    def get_mask(self, mask_id: str) -> StoredMask:
        found = self._masks_where("mask_id = ?", [mask_id])
        if not found:
            raise UnknownMaskError(f"mask {mask_id!r} is not in the catalog")
        return found[0]

    def get_masks(self, mask_ids: Sequence[str]) -> list[StoredMask]:
        """Masks in the order of `mask_ids`; UnknownMaskError names any missing."""
        found = {m.mask_id: m for m in self._masks_where("list_contains(?, mask_id)", [list(mask_ids)])}
        missing = [m for m in mask_ids if m not in found]
        if missing:
            raise UnknownMaskError(f"masks not in the catalog: {missing[:5]}{' …' if len(missing) > 5 else ''}")
        return [found[m] for m in mask_ids]

    def jaccard_matrix(self, mask_ids: Sequence[str], *, workers: int = 2) -> np.ndarray:
        """[M, M] Jaccard similarity of the given masks (all on one neuron space)."""
        masks = self.get_masks(mask_ids)
        universes = {m.universe for m in masks}
        if len(universes) > 1:
            raise MaskShapeMismatchError(f"masks come from neuron spaces of different sizes {sorted(universes)}")
        # The Rice decoder releases the GIL: decode on `workers` threads too.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            sets = list(pool.map(lambda m: m.indices, masks))
        return maskmath.jaccard_matrix(sets, universes.pop() if universes else 0, workers=workers)

    # ================================================================ helpers

    @contextlib.contextmanager
    def _lookup(self, tables: Sequence[str]) -> Iterator[duckdb.DuckDBPyConnection]:
        """The shared lookup connection, its views of `tables` refreshed to the live files."""
        with self._lookup_lock:
            if self._lookup_con is None or self._lookup_pid != os.getpid():  # never reuse across fork
                self._lookup_con = self.connect([])
                self._lookup_pid = os.getpid()
                self._lookup_files = {}
            con = self._lookup_con
            for table in tables:
                files = self.store.snapshot(table)
                if self._lookup_files.get(table) != files:
                    con.execute(f"CREATE OR REPLACE VIEW {table} AS {view_sql(con, self.store, table, files)}")
                    self._lookup_files[table] = files
            yield con

    def _select(self, table: str, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with self._lookup([table]) as con:
            return con.sql(sql, params=list(params)).to_arrow_table().to_pylist()

    def _masks_where(self, where: str, params: Sequence[Any]) -> list[StoredMask]:
        rows = self._select(
            "concept_masks",
            "SELECT mask_id, subject, model_fingerprint, params, params_hash, mask, universe, neuron_count, "
            f"fraction, stats FROM concept_masks WHERE {where}",
            params,
        )
        return [
            StoredMask(
                mask_id=r["mask_id"], subject=r["subject"], model_fingerprint=r["model_fingerprint"],
                params=json.loads(r["params"]), params_hash=r["params_hash"], blob=r["mask"],
                universe=r["universe"], neuron_count=r["neuron_count"], fraction=r["fraction"],
                stats=json.loads(r["stats"]),
            )
            for r in rows
        ]

    def _models(self, fingerprints: set[str]) -> dict[str, ModelInfo]:
        rows = self._select(
            "models",
            "SELECT fingerprint, source, layout_hash, attention, neuron_count FROM models "
            "WHERE list_contains(?, fingerprint)",
            [sorted(fingerprints)],
        )
        return {r["fingerprint"]: ModelInfo(**r) for r in rows}

    def _require_subjects(self, ids: set[str]) -> None:
        if not ids:
            return
        rows = self._select("subjects", "SELECT id FROM subjects WHERE list_contains(?, id)", [sorted(ids)])
        missing = sorted(ids - {r["id"] for r in rows})
        if missing:
            raise UnknownSubjectError(
                f"subjects not in the catalog: {missing[:5]}; add them with write_subject (or `cones ingest`) first"
            )

    def _require_masks(self, ids: set[str]) -> None:
        if not ids:
            return
        rows = self._select(
            "concept_masks", "SELECT mask_id FROM concept_masks WHERE list_contains(?, mask_id)", [sorted(ids)]
        )
        missing = sorted(ids - {r["mask_id"] for r in rows})
        if missing:
            raise UnknownMaskError(f"generations refer to masks not in the catalog: {missing[:5]}")

    @staticmethod
    def _to_arrow(table: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> pa.Table:
        if table not in SCHEMAS:
            raise SchemaError(f"unknown table {table!r}; the catalog has {list(TABLES)}")
        schema = SCHEMAS[table]
        now = datetime.now(timezone.utc)
        if isinstance(rows, pa.Table):
            data = rows
            if "created" in schema.names and "created" not in data.column_names:
                data = data.append_column("created", pa.array([now] * data.num_rows, type=schema.field("created").type))
            try:
                return data.select(schema.names).cast(schema)
            except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise SchemaError(f"rows for {table!r} do not fit its schema {schema}: {exc}") from exc
        records = [dict(r) for r in rows]
        if "created" in schema.names:
            for r in records:
                r.setdefault("created", now)
        missing = {n for n in schema.names for r in records if n not in r}
        if missing:
            raise SchemaError(f"rows for {table!r} lack columns {sorted(missing)}")
        try:
            return pa.Table.from_pylist(records, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SchemaError(f"rows for {table!r} do not fit its schema: {exc}") from exc


def load_catalog(uri: str, **storage_options: Any) -> Catalog:
    """Open (or start) a catalog at a local path, file://, memory:// or any fsspec URI."""
    return Catalog(Store(uri, **storage_options))


def _entry(e: Any) -> tuple[str, tuple[int, ...], int, int]:
    if isinstance(e, tuple) and len(e) == 4:
        name, shape, offset, numel = e
    else:
        name, shape, offset, numel = e.name, e.shape, e.offset, e.numel
    return str(name), tuple(int(s) for s in shape), int(offset), int(numel)


def _sorted_unique(table: pa.Table, pk: tuple[str, ...]) -> pa.Table:
    """Rows sorted by primary key, the first of each key kept (vectorised: batches hold millions)."""
    for c in pk:
        if table.column(c).null_count:
            raise SchemaError(f"primary key column {c!r} must not be null")
    table = table.sort_by([(c, "ascending") for c in pk])
    if table.num_rows < 2:
        return table
    differs = None
    for c in pk:
        col = table.column(c)
        step = pc.not_equal(col.slice(1), col.slice(0, table.num_rows - 1))
        differs = step if differs is None else pc.or_(differs, step)
    keep = pa.concat_arrays([pa.array([True]), differs.combine_chunks()])
    return table.filter(keep)


def _keys_digest(table: pa.Table, pk: tuple[str, ...]) -> str:
    """sha256 of the sorted primary keys: the file name of a commit (same keys, same file)."""
    cols = [pc.cast(table.column(c), pa.string()) for c in pk]
    joined = (pc.binary_join_element_wise(*cols, "\x1e") if len(cols) > 1 else cols[0]).combine_chunks()
    # Hash exactly the logical bytes (lengths, then characters), whatever the buffer layout.
    _, offsets_buf, data_buf = joined.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[joined.offset : joined.offset + len(joined) + 1]
    h = hashlib.sha256(np.diff(offsets).astype("<i4").tobytes())
    h.update(memoryview(data_buf)[offsets[0] : offsets[-1]] if data_buf is not None else b"")
    return h.hexdigest()


def _parquet_bytes(table: pa.Table) -> bytes:
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    lo, hi = _ROW_GROUP_ROWS
    rows = min(hi, max(lo, _ROW_GROUP_BYTES // per_row))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=rows)
    return buf.getvalue()
