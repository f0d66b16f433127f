"""A catalog writer run as its own process by the crash and concurrency tests.

    python writer_process.py URI WRITER_ID COMMITS ROWS_PER_COMMIT

Each commit writes ROWS_PER_COMMIT clip_scores rows for generation
f"w{WRITER_ID}-c{i}" and then prints "done i" (flushed), so the parent knows
which commits completed before it killed us.
"""

from __future__ import annotations

import sys

from catalog import ClipScore, load_catalog


def main() -> None:
    uri, writer, commits, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    catalog = load_catalog(uri)
    print("ready", flush=True)
    for i in range(commits):
        gen = f"w{writer}-c{i}"
        catalog.write_clip_scores([ClipScore(gen, "image_text", f"t{j}", float(j), "toy") for j in range(rows)])
        print(f"done {i}", flush=True)


if __name__ == "__main__":
    main()
