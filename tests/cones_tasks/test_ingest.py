"""Ingest validation (issue #6 item 7): every bad case is a real file written by PIL."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cones_tasks.ingest import (
    EmptySubjectError,
    InvalidSubjectIdError,
    content_hash,
    fit_to_resolution,
    ingest_images,
    normalize_image,
    validate_subject_id,
)


def _gradient(w: int = 80, h: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 3 % 256, y * 4 % 256, (x + y) % 256], axis=2).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A real 8×8 PNG whose IHDR is rewritten to claim width×height (CRC fixed, so PIL trusts it)."""
    data = bytearray(_save(Image.fromarray(_gradient(8, 8)), "PNG"))
    ihdr_start = 8 + 8  # signature, then length+type of the first chunk
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)


def _write_folder(root: Path, files: dict[str, bytes]) -> list[tuple[str, bytes]]:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return [(p.name, p.read_bytes()) for p in sorted(root.iterdir())]


def test_one_bad_file_never_loses_the_good_ones(tmp_path):
    good = _save(Image.fromarray(_gradient()), "PNG")
    other = _save(Image.fromarray(_gradient()[::-1].copy()), "PNG")
    files = _write_folder(
        tmp_path / "dog",
        {
            "a.png": good,
            "b.png": other,
            "empty.png": b"",
            "notes.txt": b"this is not an image\n",
            "truncated.png": good[: len(good) // 2],
            "corrupt.png": good[:60] + bytes(range(256)) * 4 + good[-12:],
            "bomb.png": _png_claiming(50_000, 50_000),
            "small.png": _save(Image.fromarray(_gradient(32, 32)), "PNG"),
        },
    )
    report = ingest_images("dog", files, min_side=64)
    assert [img.name for img in report.accepted] == ["a.png", "b.png"]
    reasons = {r.name: r.reason for r in report.rejected}
    assert set(reasons) == {"empty.png", "notes.txt", "truncated.png", "corrupt.png", "bomb.png", "small.png"}
    assert "0 bytes" in reasons["empty.png"]
    assert "not a recognised image" in reasons["notes.txt"]
    assert "truncated or corrupt" in reasons["truncated.png"]
    assert "truncated or corrupt" in reasons["corrupt.png"]
    assert "enormous" in reasons["bomb.png"] or "over the cap" in reasons["bomb.png"]
    assert "minimum side of 64 px" in reasons["small.png"]
    assert "2 accepted, 6 rejected, 0 duplicates" in report.summary()


def test_pixel_cap_is_checked_on_the_header_before_decoding():
    # 9000×9000 = 81 MP: under PIL's own bomb limit, over our 64 MP default cap. The body is an
    # 8×8 image, so if the body were decoded first this would fail as "corrupt", not "over the cap".
    with pytest.raises(ValueError, match=r"9000×9000 = 81,000,000 pixels, over the cap of 67,108,864"):
        normalize_image(_png_claiming(9000, 9000), min_side=1)
    with pytest.raises(ValueError, match="over the cap of 1,000"):
        normalize_image(_save(Image.fromarray(_gradient()), "PNG"), min_side=1, max_pixels=1000)


def test_cmyk_becomes_rgb():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)
    rgb[:, 32:] = (30, 30, 200)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    pixels, mode = normalize_image(_save(cmyk, "TIFF"), min_side=64)
    assert mode == "CMYK" and pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - rgb.astype(int)).max() <= 2


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey16 = np.zeros((64, 64), np.uint16)
    grey16[:, :16], grey16[:, 16:32], grey16[:, 32:48], grey16[:, 48:] = 0, 16384, 32768, 65535
    image = Image.fromarray(grey16)
    assert image.mode == "I;16"
    pixels, mode = normalize_image(_save(image, "PNG"), min_side=64)
    assert mode.startswith("I")
    # PIL's own convert("RGB") would make every non-zero column 255.
    assert [int(pixels[0, c, 0]) for c in (0, 16, 32, 48)] == [0, 64, 128, 255]
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_palette_one_bit_and_alpha_become_rgb_on_white():
    base = Image.fromarray(_gradient(64, 64))
    palette, _ = normalize_image(_save(base.convert("P"), "PNG"), min_side=64)
    assert palette.shape == (64, 64, 3)

    onebit, mode = normalize_image(_save(base.convert("1"), "PNG"), min_side=64)
    assert mode == "1" and set(np.unique(onebit)) <= {0, 255}

    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, 32:, 3] = 255  # right half opaque, left half fully transparent
    out, mode = normalize_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"), min_side=64)
    assert mode == "RGBA"
    assert (out[:, :32] == 255).all() and (out[:, 32:] == (10, 20, 30)).all()

    la = Image.fromarray(rgba).convert("LA")
    out, mode = normalize_image(_save(la, "PNG"), min_side=64)
    assert mode == "LA" and (out[:, :32] == 255).all()

    transparent_palette = Image.fromarray(rgba, "RGBA").convert("P")
    data = _save(transparent_palette, "PNG", transparency=transparent_palette.getpixel((0, 0)))
    out, mode = normalize_image(data, min_side=64)
    assert mode == "P" and (out[:, :32] == 255).all()


def test_exif_orientation_is_applied_and_dedups_with_the_rotated_original(tmp_path):
    pixels = _gradient(80, 64)  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    tagged = _save(Image.fromarray(pixels), "PNG", exif=exif)
    upright = np.rot90(pixels, k=-1).copy()  # what a viewer shows: portrait
    out, _ = normalize_image(tagged, min_side=64)
    assert out.shape == (80, 64, 3)
    assert np.array_equal(out, upright)

    files = _write_folder(tmp_path / "cat", {"tagged.png": tagged, "upright.tiff": _save(Image.fromarray(upright), "TIFF")})
    report = ingest_images("cat", files, min_side=64)
    assert len(report.accepted) == 1 and report.accepted[0].name == "tagged.png"
    (dup,) = report.duplicates
    assert (dup.name, dup.duplicate_of) == ("upright.tiff", "tagged.png")
    assert dup.content_hash == content_hash(upright)


def test_accepted_image_round_trips_through_png():
    files = [("a.png", _save(Image.fromarray(_gradient()), "PNG"))]
    (img,) = ingest_images("s", files, min_side=64).accepted
    assert (img.width, img.height) == (80, 64)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(img.to_png()))), img.pixels)


def test_empty_folder_is_an_error_naming_the_subject(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptySubjectError, match="subject 'empty' has no files"):
        ingest_images("empty", [], min_side=64)


@pytest.mark.parametrize(
    ("subject_id", "problem"),
    [
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("x..y", "'..'"),
        ("bad\x00id", "control character"),
        ("tab\tid", "control character"),
        ("x" * 65, "over the limit of 64"),
        ("", "non-empty"),
        (" padded", "whitespace"),
        ("Dog Name", "contains a space"),
        (".hidden", "starts with '.'"),
        ("-rf", "starts with '-'"),
        ("dog.", "ends with '.'"),
        ("CON", "Windows device name CON"),
        ("con.dog", "Windows device name CON"),
        ("lpt1", "Windows device name LPT1"),
        ("dog*?", "contains '*', '?'"),
        ("a:b", "contains ':'"),
        ("zero\u200bwidth", "control character"),
    ],
)
def test_unsafe_subject_ids_are_refused(subject_id, problem):
    with pytest.raises(InvalidSubjectIdError, match=re.escape(problem)):
        validate_subject_id(subject_id)
    with pytest.raises(InvalidSubjectIdError):
        ingest_images(subject_id, [("a.png", b"")], min_side=1)


def test_reasonable_subject_ids_pass():
    for subject_id in ("striped-yellow-triangle", "dog_2", "Mme.Chat", "x" * 64, "chien-été", "कुत्ता", "猫", "console", "COM10"):
        assert validate_subject_id(subject_id) == subject_id


def test_the_refusal_states_the_rule_the_code_applies():
    """Every character the message allows passes, everything else is refused: message and code agree."""
    import unicodedata

    from cones_tasks.ingest import SUBJECT_ID_RULE

    with pytest.raises(InvalidSubjectIdError) as info:
        validate_subject_id("Dog Name")
    assert SUBJECT_ID_RULE in str(info.value)
    assert "letters or digits (any script)" in SUBJECT_ID_RULE and "'-', '_' or '.' between them" in SUBJECT_ID_RULE
    for ch in map(chr, range(0x20, 0x250)):
        allowed = ch in "-_." or unicodedata.category(ch)[0] in "LM" or unicodedata.category(ch) == "Nd"
        candidate = f"a{ch}b"
        if allowed:
            assert validate_subject_id(candidate) == unicodedata.normalize("NFC", candidate)
        else:
            with pytest.raises(InvalidSubjectIdError):
                validate_subject_id(candidate)


def test_subject_ids_are_stored_in_one_unicode_form():
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "chien-été")
    assert decomposed != "chien-été" and validate_subject_id(decomposed) == "chien-été"


def test_fit_to_resolution_centre_crops_then_resizes():
    pixels = np.zeros((64, 96, 3), np.uint8)
    pixels[:, 16:80] = 200  # the centre square is uniform; the side bands are cropped away
    out = fit_to_resolution(pixels, 16)
    assert out.shape == (16, 16, 3) and (out == 200).all()
