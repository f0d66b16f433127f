"""Typed catalog errors. Every message names the problem and the fix."""

from __future__ import annotations


class CatalogError(Exception):
    """Base class of every error raised by the catalog."""


class CatalogURIError(CatalogError, ValueError):
    """The catalog URI cannot be opened (unknown scheme, missing fsspec extra)."""


class UnknownSubjectError(CatalogError, KeyError):
    """A subject id that was never written with `write_subject`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownModelError(CatalogError, KeyError):
    """A model fingerprint that was never written with `write_model`."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownMaskError(CatalogError, KeyError):
    """A mask id that is not in `concept_masks`."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownBlobError(CatalogError, FileNotFoundError):
    """A blob URI that is not under this catalog's root or was never written."""


class MaskShapeMismatchError(CatalogError, ValueError):
    """A mask whose universe (neuron count) or fingerprint differs from its model's neuron space."""


class SchemaError(CatalogError, ValueError):
    """Rows that do not fit a table's schema (missing column, wrong type)."""


class QueryError(CatalogError, ValueError):
    """SQL that DuckDB could not parse, bind or run (a misspelt column, a wrong type); the message is DuckDB's."""


class ReadOnlyViolationError(CatalogError, PermissionError):
    """A SQL statement that would change state, given to a read-only entry point (`cones sql`)."""
