"""Validate and normalise a subject's reference images (docs/pipeline.md, "Bad input (ingest)").

Input is `(name, bytes)` pairs — where the bytes come from (a folder, `s3://`) is the
catalog's business (`catalog.sources.list_image_files`). Output is RGB uint8 pixels with
a content hash of the *normalised* pixels, so the same picture saved as PNG and as TIFF, or
rotated by an EXIF tag instead of in its pixels, counts once.

Rules: one bad file never loses the good ones — each file is accepted, rejected with a
reason, or reported as a duplicate. What a user expects to "just work" (CMYK, 16-bit,
palette, 1-bit, alpha, EXIF rotation) is converted, not rejected.
"""

from __future__ import annotations

import hashlib
import io
import unicodedata
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cones_tasks.neurons.layout_settings import Box, check_box

MAX_SUBJECT_ID_CHARS = 64
DEFAULT_MIN_SIDE = 64
# 64 MP: a 8k×8k photo passes; a header claiming 50k×50k (a decompression bomb: a few KB
# that decodes to gigabytes) is refused from its header alone, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 8192 * 8192

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class InvalidSubjectIdError(ValueError):
    """A subject id that is unsafe as a path component or a catalog key."""


class EmptySubjectError(ValueError):
    """A subject folder with no files at all."""


class ImageRejectedError(ValueError):
    """One file that cannot become a reference image; the message says why and what to do."""


@dataclass(frozen=True)
class NormalizedImage:
    name: str
    content_hash: str  # sha256 hex of (height, width, RGB pixels)
    pixels: np.ndarray = field(repr=False)  # [H, W, 3] uint8
    source_mode: str  # the PIL mode it arrived in, e.g. "CMYK", "I;16", "P"

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def to_png(self) -> bytes:
        return encode_png(self.pixels)


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str


@dataclass(frozen=True)
class Duplicate:
    name: str
    duplicate_of: str
    content_hash: str


@dataclass(frozen=True)
class IngestReport:
    subject_id: str
    accepted: tuple[NormalizedImage, ...]
    rejected: tuple[Rejection, ...]
    duplicates: tuple[Duplicate, ...]

    def summary(self) -> str:
        lines = [
            f"subject {self.subject_id!r}: {len(self.accepted)} accepted, "
            f"{len(self.rejected)} rejected, {len(self.duplicates)} duplicates"
        ]
        lines += [f"  rejected {r.name}: {r.reason}" for r in self.rejected]
        lines += [f"  duplicate {d.name} = {d.duplicate_of}" for d in self.duplicates]
        return "\n".join(lines)


# Names Windows reserves for devices, with or without an extension ("CON", "con.dog"):
# https://learn.microsoft.com/en-us/windows/win32/fileio/naming-a-file
WINDOWS_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
)
SUBJECT_ID_RULE = (
    f"a subject id is 1–{MAX_SUBJECT_ID_CHARS} letters or digits (any script), with '-', '_' or '.' "
    "between them (not first or last, no '..'), and not a Windows device name (CON, PRN, AUX, NUL, "
    "COM0–COM9, LPT0–LPT9); e.g. 'striped-yellow-triangle'"
)
_PUNCTUATION = frozenset("-_.")


def validate_subject_id(subject_id: str) -> str:
    """Return `subject_id` (in Unicode NFC form) if it follows SUBJECT_ID_RULE, else raise with every problem.

    Subject ids become folder names in the catalog store (`images/<subject>/…`) on whatever
    filesystem holds it, so the rule is what is safe as a path component on all common ones:
    no separators or '..' (they would write outside the folder), no leading '.' (hidden on
    Unix) or '-' (read as an option), no trailing '.' (Windows drops it), no device names,
    no spaces or control characters (they break shells, logs and SQL output). NFC because
    macOS stores names decomposed: 'é' typed two ways must be one subject.
    """
    if not isinstance(subject_id, str) or not subject_id.strip():
        raise InvalidSubjectIdError(f"subject id must be a non-empty string, got {subject_id!r}; {SUBJECT_ID_RULE}")
    value = unicodedata.normalize("NFC", subject_id)
    problems = []
    if len(value) > MAX_SUBJECT_ID_CHARS:
        problems.append(f"is {len(value)} characters, over the limit of {MAX_SUBJECT_ID_CHARS}")
    if value != value.strip():
        problems.append("has leading or trailing whitespace")
    if "/" in value or "\\" in value:
        problems.append("contains a path separator")
    if any(_control(ch) for ch in value):
        problems.append("contains a control character")
    others = sorted({ch for ch in value.strip() if not (_id_character(ch) or _control(ch) or ch in "/\\")})
    if others:
        problems.append("contains " + ", ".join("a space" if ch == " " else repr(ch) for ch in others))
    if ".." in value:
        problems.append("contains '..'")
    stripped = value.strip()
    if stripped and stripped[0] in _PUNCTUATION:
        problems.append(f"starts with {stripped[0]!r}")
    if stripped and stripped[-1] in _PUNCTUATION:
        problems.append(f"ends with {stripped[-1]!r}")
    if value.split(".", 1)[0].upper() in WINDOWS_DEVICE_NAMES:
        problems.append(f"is the Windows device name {value.split('.', 1)[0].upper()}")
    if problems:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidSubjectIdError(f"subject id {shown!r} {'; '.join(problems)}. Rule: {SUBJECT_ID_RULE}")
    return value


def _control(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")


def _id_character(ch: str) -> bool:
    # Letters (L*), their combining marks (M*: vowel signs in Devanagari, accents) and decimal digits.
    return ch in _PUNCTUATION or unicodedata.category(ch)[0] in "LM" or unicodedata.category(ch) == "Nd"


def normalize_image(
    data: bytes, *, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, str]:
    """Decode one file to RGB uint8 `[H, W, 3]`; return (pixels, source mode) or raise ImageRejectedError."""
    if len(data) == 0:
        raise ImageRejectedError("file is empty (0 bytes); re-export or remove it")
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between MAX_IMAGE_PIXELS and twice that; we decide ourselves below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageRejectedError(f"header claims an enormous image ({exc}); refusing to decode it") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejectedError("not a recognised image format (PNG, JPEG, WebP, TIFF, …); remove it") from exc
    width, height = image.size
    # Checked on the header, BEFORE decoding: a bomb must cost nothing to refuse.
    if width * height > max_pixels:
        raise ImageRejectedError(
            f"header claims {width}×{height} = {width * height:,} pixels, over the cap of {max_pixels:,}; "
            "downscale it or raise max_pixels"
        )
    source_mode = image.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()  # a truncated or corrupt body fails here
            image = ImageOps.exif_transpose(image)  # camera rotation: what the user saw
            pixels = _to_rgb(image)
    # PIL reports broken bodies as OSError, SyntaxError, ValueError, zlib or struct errors
    # depending on the codec; every one of them means "this file is unreadable".
    except Exception as exc:  # noqa: BLE001
        raise ImageRejectedError(f"truncated or corrupt image data ({type(exc).__name__}: {exc}); re-export it") from exc
    h, w = pixels.shape[:2]
    if min(h, w) < min_side:
        raise ImageRejectedError(
            f"image is {w}×{h}, below the minimum side of {min_side} px; use a larger image or lower min_side"
        )
    return pixels, source_mode


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # PIL's convert("RGB") clips 16-bit values at 255 (almost all white); scale instead.
        grey = np.asarray(image).astype(np.float64)
        scale = 65535.0 if mode != "I" or grey.max(initial=0) > 255 else 255.0
        grey8 = np.clip(np.rint(grey / scale * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(image).astype(np.float64)
        if grey.max(initial=0) <= 1.0:
            grey = grey * 255.0
        return np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        # Composite on white: a transparent background is "nothing", which white shows best
        # (black would turn a logo's cut-out into a dark blob).
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def content_hash(pixels: np.ndarray) -> str:
    """sha256 of the normalised pixels and their shape: the image's identity in the catalog."""
    h, w = pixels.shape[:2]
    digest = hashlib.sha256(f"{h}x{w}:".encode())
    digest.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def ingest_images(
    subject_id: str,
    files: Iterable[tuple[str, bytes]],
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> IngestReport:
    """Validate every file of one subject; never let one bad file lose the others.

    Raises InvalidSubjectIdError for an unsafe id and EmptySubjectError when there are no
    files at all; everything per-file ends up in the report.
    """
    validate_subject_id(subject_id)
    files = sorted(files, key=lambda item: item[0])  # stable: the first name wins a duplicate
    if not files:
        raise EmptySubjectError(
            f"subject {subject_id!r} has no files; put 3–8 photos of the subject in its folder"
        )
    accepted: list[NormalizedImage] = []
    rejected: list[Rejection] = []
    duplicates: list[Duplicate] = []
    seen: dict[str, str] = {}
    for name, data in files:
        try:
            pixels, mode = normalize_image(data, min_side=min_side, max_pixels=max_pixels)
        except ImageRejectedError as exc:
            rejected.append(Rejection(name=name, reason=str(exc)))
            continue
        digest = content_hash(pixels)
        if digest in seen:
            duplicates.append(Duplicate(name=name, duplicate_of=seen[digest], content_hash=digest))
            continue
        seen[digest] = name
        accepted.append(NormalizedImage(name=name, content_hash=digest, pixels=pixels, source_mode=mode))
    return IngestReport(
        subject_id=subject_id, accepted=tuple(accepted), rejected=tuple(rejected), duplicates=tuple(duplicates)
    )


def _centre_square(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the square fit_to_resolution crops from the centre of a height × width photo."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def fit_to_resolution(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop to a square and resize to `resolution` (the model's input size): `[H, W, 3]` → `[r, r, 3]`."""
    top, left, side = _centre_square(*pixels.shape[:2])
    square = Image.fromarray(pixels[top : top + side, left : left + side])
    if side != resolution:
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8).copy()


def encode_png(pixels: np.ndarray) -> bytes:
    """RGB uint8 `[H, W, 3]` → PNG bytes (lossless: what the catalog stores)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """Image bytes written by this pipeline → RGB uint8 `[H, W, 3]`."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


class CaptionError(ValueError):
    """A caption that names no accepted photo, or does not name the subject's class word; or a bad box."""


class SceneCaption(NamedTuple):
    """One captions.json entry: a scene photo's caption and, when given, the subject's region in it."""

    caption: str
    box: Box | None = None  # x0, y0, x1, y1 as fractions of the photo


def _by_name(report: IngestReport) -> dict[str, str]:
    by_name = {im.name: im.content_hash for im in report.accepted}
    by_name.update({d.name: d.content_hash for d in report.duplicates})  # a duplicate's entry goes to the photo it repeats
    return by_name


def check_captions(subject_id: str, class_word: str, captions: Mapping[str, SceneCaption | str], report: IngestReport
                   ) -> dict[str, str]:
    """{content hash: caption} for the accepted photos that `captions` ({file name: caption}) describes.

    A caption must name a photo of the folder and the subject's class word (discovery finds the
    subject by it, docs/composition.md). A caption of a duplicate photo goes to the photo it
    duplicates. Raises CaptionError naming every bad entry.
    """
    import re

    by_name = _by_name(report)
    word = re.compile(rf"(?<![\w-]){re.escape(class_word)}(?![\w-])", re.IGNORECASE)
    problems, out = [], {}
    for name, entry in sorted(captions.items()):
        caption = entry.caption if isinstance(entry, SceneCaption) else entry
        if name not in by_name:
            problems.append(f"{name!r} is not an accepted photo of the folder")
        elif not word.search(caption):
            problems.append(f"the caption of {name!r} ({caption!r}) does not name the class word {class_word!r}")
        else:
            out[by_name[name]] = caption
    if problems:
        raise CaptionError(
            f"captions.json of subject {subject_id!r}: " + "; ".join(problems)
            + ". Each entry maps a photo's file name to a caption that names the subject by its class word, "
            f"e.g. \"a {class_word} and a red ball on sand\""
        )
    return out


def check_boxes(subject_id: str, captions: Mapping[str, SceneCaption | str], report: IngestReport
                ) -> dict[str, Box]:
    """{content hash: box} of the captioned photos whose entry gives the subject's box; the captions themselves are
    check_captions'. A box must lie inside the photo (fractions of its width and height, x0 < x1, y0 < y1).
    Raises CaptionError naming every bad box."""
    by_name = _by_name(report)
    problems, out = [], {}
    for name, entry in sorted(captions.items()):
        if not isinstance(entry, SceneCaption) or entry.box is None or name not in by_name:
            continue
        try:
            check_box(entry.box, f"the box of {name!r}")
        except ValueError as exc:
            problems.append(str(exc))
        else:
            out[by_name[name]] = entry.box
    if problems:
        raise CaptionError(f"captions.json of subject {subject_id!r}: " + "; ".join(problems))
    return out


def crop_box(box: Box, width: int, height: int) -> Box | None:
    """`box` (fractions of a width × height photo) in the square fit_to_resolution crops from its centre; None
    when the crop leaves none of it."""
    top, left, side = _centre_square(height, width)  # the very crop, odd margins rounded as it rounds them
    x0, x1 = [min(max((v * width - left) / side, 0.0), 1.0) for v in (box[0], box[2])]
    y0, y1 = [min(max((v * height - top) / side, 0.0), 1.0) for v in (box[1], box[3])]
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None
