"""Storage for cones: Parquet tables on any fsspec store, read through DuckDB (docs/catalog.md).

The only package that knows Parquet, DuckDB or fsspec. Start with `load_catalog(uri)`.
"""

from catalog.catalog import Catalog, load_catalog
from catalog.errors import (
    CatalogError,
    CatalogURIError,
    MaskShapeMismatchError,
    QueryError,
    ReadOnlyViolationError,
    SchemaError,
    UnknownBlobError,
    UnknownMaskError,
    UnknownModelError,
    UnknownSubjectError,
)
from catalog.records import (
    ClipScore,
    Generation,
    ModelInfo,
    NewMask,
    StoredMask,
    Subject,
    SubjectImage,
    generation_id,
    generation_ids,
    grid_id,
    mask_id_for,
    params_hash,
    shard_of,
)
from catalog.schema import PRIMARY_KEYS, SCHEMAS, TABLES

__all__ = [
    "Catalog",
    "CatalogError",
    "CatalogURIError",
    "ClipScore",
    "Generation",
    "MaskShapeMismatchError",
    "ModelInfo",
    "NewMask",
    "PRIMARY_KEYS",
    "QueryError",
    "ReadOnlyViolationError",
    "SCHEMAS",
    "SchemaError",
    "StoredMask",
    "Subject",
    "SubjectImage",
    "TABLES",
    "UnknownBlobError",
    "UnknownMaskError",
    "UnknownModelError",
    "UnknownSubjectError",
    "generation_id",
    "generation_ids",
    "grid_id",
    "load_catalog",
    "mask_id_for",
    "params_hash",
    "shard_of",
]
