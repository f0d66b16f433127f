"""Immutable files on any fsspec store, published atomically (docs/catalog.md).

Layout under the catalog root:

    tables/<table>/part-<key>.parquet        one per commit; key = hash of the rows' primary keys
    tables/<table>/base-<key>.parquet        output of `compact`, sorted by primary key
    tables/<table>/_tombstones/<key>.json    files a compaction replaced (readers skip them)
    tables/<table>/_staging/<uuid>.parquet   local writes in flight (never read)
    blobs/<ab>/<sha256><suffix>              content-addressed images and reports

Atomic publish: on a local disk a file is written under `_staging/` and then
`os.replace`d to its final name (atomic on POSIX). Object stores (s3, gcs,
memory) make a single PUT visible all at once, so the bytes are written in one
`pipe_file`. Either way a reader sees a complete file or none, and a writer
killed mid-commit leaves at most a staging file that no reader looks at.

Readers list tombstones *before* parts: a compaction publishes its output
before its tombstone, so a reader that sees a tombstone also sees its output.
Replaced files are deleted only after a grace period, so a reader holding an
older snapshot keeps working while `compact` runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem

from catalog.errors import CatalogURIError, UnknownBlobError

PART = "part-"
BASE = "base-"
PARQUET = ".parquet"
TOMBSTONES = "_tombstones"
STAGING = "_staging"


@dataclass(frozen=True)
class TableFiles:
    """The published, live files of one table at one moment (a read snapshot)."""

    base: tuple[str, ...]  # compaction outputs; each is deduplicated by primary key
    tail: tuple[str, ...]  # commits since; each deduplicated within itself only

    @property
    def all(self) -> tuple[str, ...]:
        return self.base + self.tail


class Store:
    """One catalog root on one fsspec filesystem."""

    def __init__(self, uri: str, **storage_options: object) -> None:
        try:
            fs, root = fsspec.core.url_to_fs(str(uri), **storage_options)
        except (ImportError, ValueError) as exc:
            raise CatalogURIError(
                f"cannot open catalog {uri!r}: {exc}. Local paths, file://, memory:// work out of the box; "
                "s3:// needs the 's3' extra (pip install 'cones[s3]')."
            ) from exc
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(fs, LocalFileSystem)
        self.uri = self.url(self.root)

    def write_problem(self) -> str | None:
        """Why this root cannot take writes, or None; creates nothing (a run's pre-flight, docs/pipeline.md).

        A local root that does not exist yet is fine when its nearest existing ancestor is a
        writable folder (the first commit creates it); an object store is asked to take and drop
        one empty object under the root.
        """
        if self.local:
            here = self.root
            while not os.path.exists(here):
                parent = os.path.dirname(here)
                if parent == here:
                    break
                here = parent
            if not os.path.isdir(here):
                return f"catalog {self.uri}: {here} is a file, not a folder; pick another catalog path"
            if not os.access(here, os.W_OK | os.X_OK):
                return f"catalog {self.uri}: {here} is not writable by this user; pick a catalog path you can write to"
            return None
        probe = f"{self.root}/{STAGING}/preflight-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm(probe)
        except Exception as exc:  # noqa: BLE001 — any refusal by the store is the answer
            return f"catalog {self.uri} does not take writes ({type(exc).__name__}: {exc}); check the URI and its credentials"
        return None

    # ------------------------------------------------------------ paths

    def url(self, path: str) -> str:
        """A URL for `path` that DuckDB and fsspec can both open."""
        return path if self.local else self.fs.unstrip_protocol(path)

    @property
    def tables_root(self) -> str:
        return f"{self.root}/tables"

    def table_dir(self, table: str) -> str:
        return f"{self.tables_root}/{table}"

    # ------------------------------------------------------------ writes

    def publish(self, path: str, data: bytes) -> bool:
        """Make `data` appear at `path` atomically; False if it already existed (idempotent)."""
        if self.fs.exists(path):
            return False
        if self.local:
            staging = f"{os.path.dirname(path)}/{STAGING}"
            os.makedirs(staging, exist_ok=True)
            tmp = f"{staging}/{uuid.uuid4().hex}{PARQUET}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # the rename must not publish a file whose bytes are not on disk
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        return True

    def publish_part(self, table: str, key: str, data: bytes) -> tuple[str, bool]:
        path = f"{self.table_dir(table)}/{PART}{key}{PARQUET}"
        return path, self.publish(path, data)

    def publish_base(self, table: str, key: str, data: bytes) -> str:
        path = f"{self.table_dir(table)}/{BASE}{key}{PARQUET}"
        self.publish(path, data)
        return path

    def publish_tombstone(self, table: str, *, replaced: list[str], output: str) -> str:
        names = sorted(os.path.basename(p) for p in replaced)
        key = hashlib.sha256("\n".join([output, *names]).encode()).hexdigest()[:32]
        body = json.dumps({"output": os.path.basename(output), "replaced": names, "created": time.time()})
        path = f"{self.table_dir(table)}/{TOMBSTONES}/{key}.json"
        self.publish(path, body.encode())
        return path

    # ------------------------------------------------------------ reads

    def snapshot(self, table: str) -> TableFiles:
        """Live files of `table`: parts and bases minus those a tombstone replaced."""
        replaced: set[str] = set()
        for _, body in self._tombstones(table):
            replaced.update(body["replaced"])
        base, tail = [], []
        for path in sorted(self._ls(self.table_dir(table))):
            name = os.path.basename(path)
            if not name.endswith(PARQUET) or name in replaced:
                continue
            if name.startswith(BASE):
                base.append(path)
            elif name.startswith(PART):
                tail.append(path)
        return TableFiles(base=tuple(base), tail=tuple(tail))

    def read(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    # ------------------------------------------------------------ cleanup

    def clean(self, table: str, *, grace_s: float) -> int:
        """Delete files replaced more than `grace_s` ago and stale staging files; returns count."""
        now = time.time()
        deleted = 0
        for tomb_path, body in self._tombstones(table):
            if now - float(body.get("created", now)) < grace_s:
                continue
            for name in body["replaced"]:
                deleted += self._remove(f"{self.table_dir(table)}/{name}")
            self._remove(tomb_path)
        if self.local:
            # Writers rename their staging files away while we look (publish's os.replace), and another
            # `compact` may be cleaning too: a file gone between the listing and the stat or the delete
            # was published or deleted by someone else, not an error.
            for path in self._ls(f"{self.table_dir(table)}/{STAGING}"):
                try:
                    stale = now - os.path.getmtime(path) >= grace_s
                except FileNotFoundError:
                    continue
                if stale:
                    deleted += self._remove(path)
        return deleted

    def _remove(self, path: str) -> int:
        """Delete `path`; 1 if this call deleted it, 0 if it was already gone (another cleaner's)."""
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return 0
        return 1

    # ------------------------------------------------------------ blobs

    def put_blob(self, data: bytes, *, suffix: str = "") -> str:
        if suffix and (not suffix.startswith(".") or "/" in suffix):
            raise ValueError(f"suffix must look like '.png', got {suffix!r}")
        digest = hashlib.sha256(data).hexdigest()
        path = f"{self.root}/blobs/{digest[:2]}/{digest}{suffix}"
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self.publish(path, data)
        return self.fs.unstrip_protocol(path)

    def get_blob(self, uri: str) -> bytes:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        scheme = uri.split("://", 1)[0] if "://" in uri else ("file" if self.local else "")
        if scheme not in protocols and not (self.local and scheme in ("file", "local")):
            raise UnknownBlobError(f"blob {uri!r} is not on this catalog's filesystem ({self.uri})")
        path = self.fs._strip_protocol(uri)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise UnknownBlobError(f"blob {uri!r} does not exist; was it written with put_bytes?") from exc
        stem = os.path.basename(path).split(".", 1)[0]
        if len(stem) == 64 and hashlib.sha256(data).hexdigest() != stem:
            raise UnknownBlobError(f"blob {uri!r} is corrupt: its content hash does not match its name")
        return data

    # ------------------------------------------------------------ helpers

    def _ls(self, path: str) -> list[str]:
        # Listing caches (s3fs) would hide fresh commits from a reader.
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return [e["name"] for e in entries if e.get("type") == "file"]

    def _tombstones(self, table: str) -> list[tuple[str, dict]]:
        out = []
        for path in self._ls(f"{self.table_dir(table)}/{TOMBSTONES}"):
            if path.endswith(".json"):
                try:
                    out.append((path, json.loads(self.fs.cat_file(path))))
                except FileNotFoundError:  # cleaned between ls and read: its files are gone too
                    continue
        return out
