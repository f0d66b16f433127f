from __future__ import annotations

import fsspec
import pytest

from catalog.sources import SourceNotFoundError, list_image_files


def test_local_folder_lists_files_sorted_skipping_os_metadata(tmp_path):
    (tmp_path / "b.png").write_bytes(b"B")
    (tmp_path / "a.jpg").write_bytes(b"A")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "class_word").write_text("dog\n")  # cones init's note of the class word, not a photo
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"C")
    assert list_image_files(str(tmp_path)) == [("a.jpg", b"A"), ("b.png", b"B")]
    assert list_image_files(f"file://{tmp_path}") == [("a.jpg", b"A"), ("b.png", b"B")]


def test_memory_uri_and_missing_folder():
    fs = fsspec.filesystem("memory")
    fs.pipe("/subjects-test/dog/x.png", b"X")
    assert list_image_files("memory://subjects-test/dog") == [("x.png", b"X")]
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        list_image_files("memory://subjects-test/cat")
    with pytest.raises(SourceNotFoundError, match="is a file"):
        list_image_files("memory://subjects-test/dog/x.png")
