"""Read a subject's input folder from any fsspec URI: a folder or URI per subject.

The catalog is the only package that touches fsspec; ingest validation itself
(cones_tasks/ingest.py) takes plain `(name, bytes)` pairs.
"""

from __future__ import annotations

import fsspec

from catalog.errors import CatalogURIError
from cones_tasks.ingest import SceneCaption

# Files every OS drops into folders; never a user's image, so not worth a rejection line.
_IGNORED = {".DS_Store", "Thumbs.db", "desktop.ini"}
# Optional, beside the photos: {"file name": "caption"} for photos that show the subject with other things, or
# {"file name": {"caption": ..., "box": [x0, y0, x1, y1]}} with the subject's region (docs/composition.md, "Scene photos").
CAPTIONS_FILE = "captions.json"
# Optional, beside the photos: the subject's class word in one line ("dog"), read by `cones init`.
CLASS_WORD_FILE = "class_word"


class CaptionsFileError(ValueError):
    """A subject folder's captions.json that is not a JSON object of file name -> caption (or caption and box)."""


class SourceNotFoundError(CatalogURIError, FileNotFoundError):
    """A subject folder or URI that does not exist."""


def source_problem(uri: str, **storage_options: object) -> str | None:
    """Why a subject's folder or URI cannot be read, or None; lists nothing but the folder itself."""
    try:
        fs, root = fsspec.core.url_to_fs(str(uri), **storage_options)
        if not fs.exists(root):
            return f"subject folder {uri!r} does not exist; check the path in the config"
        if not fs.isdir(root):
            return f"subject source {uri!r} is a file; point at the folder that holds the images"
    except Exception as exc:  # noqa: BLE001 — unreachable, unknown protocol, no credentials: all the same answer
        return f"subject source {uri!r} cannot be reached ({type(exc).__name__}: {exc}); check the URI and its credentials"
    return None


def list_image_files(uri: str, *, max_files: int = 1000, **storage_options: object) -> list[tuple[str, bytes]]:
    """Every file directly in the folder `uri`, as (file name, bytes), sorted by name.

    Non-image files are returned too: ingest rejects each with its reason, so a user learns
    why `notes.txt` was skipped. Sub-folders and OS metadata files are skipped.
    """
    try:
        fs, root = fsspec.core.url_to_fs(str(uri), **storage_options)
    except (ImportError, ValueError) as exc:
        raise CatalogURIError(f"cannot open subject source {uri!r}: {exc}") from exc
    if not fs.exists(root):
        raise SourceNotFoundError(f"subject folder {uri!r} does not exist; check the path in the config")
    if not fs.isdir(root):
        raise SourceNotFoundError(f"subject source {uri!r} is a file; point at the folder that holds the images")
    entries = [e for e in fs.ls(root, detail=True) if e.get("type") == "file"]
    files = sorted(
        (e["name"] for e in entries if e["name"].rsplit("/", 1)[-1] not in _IGNORED | {CAPTIONS_FILE, CLASS_WORD_FILE}
         and not e["name"].rsplit("/", 1)[-1].startswith("._")),
    )
    if len(files) > max_files:
        raise ValueError(f"subject folder {uri!r} holds {len(files)} files, over the limit of {max_files}; a subject needs 3–20 photos")
    return [(path.rsplit("/", 1)[-1], fs.cat_file(path)) for path in files]


def read_captions(uri: str, **storage_options: object) -> dict[str, SceneCaption]:
    """The folder's captions.json as {file name: SceneCaption (caption, box or None)}; {} when there is none.

    The box's values are checked at ingest (cones_tasks.ingest.check_boxes), with the photos they belong to."""
    import json

    fs, root = fsspec.core.url_to_fs(str(uri), **storage_options)
    path = f"{root.rstrip('/')}/{CAPTIONS_FILE}"
    if not fs.exists(path):
        return {}
    try:
        captions = json.loads(fs.cat_file(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptionsFileError(f"{uri}/{CAPTIONS_FILE} is not valid JSON ({exc}); write an object of file name -> caption") from exc
    entries = {k: _entry(v) for k, v in captions.items()} if isinstance(captions, dict) else None
    if entries is None or None in entries.values():
        raise CaptionsFileError(
            f"{uri}/{CAPTIONS_FILE} must be a JSON object of file name -> non-empty caption, e.g. "
            '{"beach.jpg": "a dog and a red ball on sand"}, or file name -> {"caption": ..., "box": [x0, y0, x1, y1]} '
            "with the subject's region as fractions of the photo's width and height"
        )
    return entries


def _entry(value: object) -> SceneCaption | None:
    """One captions.json value as a SceneCaption, whitespace normalised; None if it is neither form."""
    box = None
    if isinstance(value, dict):
        if set(value) - {"caption", "box"}:
            return None
        box = value.get("box")
        if box is not None and not (isinstance(box, list) and len(box) == 4
                                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            return None
        value = value.get("caption")
    if not isinstance(value, str) or not value.strip():
        return None
    return SceneCaption(" ".join(value.split()), None if box is None else tuple(float(v) for v in box))
