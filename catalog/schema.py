"""Table schemas and primary keys. Documented in docs/catalog.md.

Every table has a content-derived primary key: a repeated commit of the same
rows is a no-op, and readers drop duplicates by key (`catalog/views.py`).
JSON columns are stored as strings; query them with DuckDB's `->>` operator.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "models": pa.schema(
        [
            ("fingerprint", pa.string()),  # NeuronSpace.fingerprint: names + shapes + weight hash
            ("source", pa.string()),  # where the weights came from (path or URI)
            ("layout_hash", pa.string()),  # names + shapes only
            ("attention", pa.string()),  # "cross" | "self" | "both"
            ("neuron_count", pa.int64()),  # NeuronSpace.size, the universe of every mask on it
            ("created", TS),
        ]
    ),
    "model_layers": pa.schema(
        [
            ("model_fingerprint", pa.string()),
            ("name", pa.string()),  # fully qualified named_parameters() name
            ("shape", pa.list_(pa.int64())),
            ("offset", pa.int64()),  # first global neuron index of this parameter
            ("numel", pa.int64()),
        ]
    ),
    "subjects": pa.schema([("id", pa.string()), ("class_word", pa.string()), ("created", TS)]),
    "subject_images": pa.schema(
        [
            ("subject", pa.string()),
            ("content_hash", pa.string()),  # sha256 of the encoded image bytes
            ("uri", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("created", TS),
        ]
    ),
    # Captions of reference photos that show the subject with other things (docs/composition.md, "Scene photos");
    # a photo without a row here is conditioned on the bare class phrase.
    "subject_captions": pa.schema(
        [
            ("subject", pa.string()),
            ("content_hash", pa.string()),  # the subject_images row it describes
            ("caption", pa.string()),
            ("created", TS),
        ]
    ),
    # The subject's region in a captioned scene photo, where discovery's layout holds its class word
    # (docs/composition.md, "Scene photos"); a captioned photo without a row here is held over the whole image.
    "subject_boxes": pa.schema(
        [
            ("subject", pa.string()),
            ("content_hash", pa.string()),  # the subject_images row it describes
            ("box", pa.list_(pa.float64())),  # x0, y0, x1, y1 as fractions of the photo's width and height
            ("created", TS),
        ]
    ),
    "concept_masks": pa.schema(
        [
            ("mask_id", pa.string()),  # hash(subject, model_fingerprint, params_hash)
            ("subject", pa.string()),
            ("model_fingerprint", pa.string()),
            ("params", pa.string()),  # JSON of the discovery parameters
            ("params_hash", pa.string()),
            ("mask", pa.binary()),  # cones_tasks.codec blob
            ("universe", pa.int64()),
            ("neuron_count", pa.int64()),
            ("fraction", pa.float64()),
            ("stats", pa.string()),  # JSON discovery report summary
            ("created", TS),
        ]
    ),
    "generations": pa.schema(
        [
            ("id", pa.string()),  # hash of everything below except image_uri
            ("subjects", pa.list_(pa.string())),
            ("prompt", pa.string()),
            ("seed", pa.int64()),
            ("image_uri", pa.string()),
            ("model_fingerprint", pa.string()),
            ("mask_ids", pa.list_(pa.string())),
            ("params", pa.string()),  # JSON sampling parameters (steps, guidance, …)
            ("created", TS),
        ]
    ),
    # Which generations make up one run's grid, by position (docs/pipeline.md, "A run's grid"): scoring and
    # the report select "this run's generations" here instead of carrying millions of ids through a flow.
    "grid_items": pa.schema(
        [
            ("grid", pa.string()),  # the grid's id: hash of what decides its items (catalog.records.grid_id)
            ("position", pa.int64()),  # the item's place in the grid (it fixes the item's batch)
            ("generation", pa.string()),  # the `generations` id made there
        ]
    ),
    "clip_scores": pa.schema(
        [
            ("generation", pa.string()),
            ("metric", pa.string()),  # e.g. "image_image", "image_text"
            ("target", pa.string()),  # subject id or text the image was compared with
            ("value", pa.float64()),
            ("scorer", pa.string()),  # scoring model identity
            ("created", TS),
        ]
    ),
}

PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "models": ("fingerprint",),
    "model_layers": ("model_fingerprint", "name"),
    "subjects": ("id",),
    "subject_images": ("subject", "content_hash"),
    "subject_captions": ("subject", "content_hash"),
    "subject_boxes": ("subject", "content_hash"),
    "concept_masks": ("mask_id",),
    "generations": ("id",),
    "grid_items": ("grid", "position"),
    "clip_scores": ("generation", "metric", "target", "scorer"),
}

TABLES: tuple[str, ...] = tuple(SCHEMAS)
