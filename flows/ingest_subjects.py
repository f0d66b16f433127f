"""`ingest-subjects`: a folder or URI per subject → validated, content-hashed images in the catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from catalog import SubjectImage, load_catalog
from catalog.pipeline import subject_image_hashes
from catalog.sources import list_image_files, read_captions
from cones_tasks.config import IngestConfig, IngestParams, SubjectSource
from cones_tasks.ingest import check_boxes, check_captions, ingest_images
from flows._runtime import TASK_OPTIONS, fan_out


class NoUsableImagesError(ValueError):
    """Every file of a subject was rejected."""


@dataclass(frozen=True)
class SubjectIngested:
    """What one `ingest-subject` task accepted, stored and refused (the flow's summary and its `reports`)."""

    subject: str
    accepted: int  # images that passed the checks, stored by this run or an earlier one
    captioned: int  # scene photos with a caption
    already_stored: int  # accepted images an earlier run had stored: skipped
    rejected: list[tuple[str, str]]  # (file name, why)
    duplicates: list[tuple[str, str]]  # (file name, the file it repeats)


@task(name="ingest-subject", **TASK_OPTIONS)
def ingest_subject(catalog_uri: str, source: SubjectSource, params: IngestParams) -> SubjectIngested:
    """Validate one subject's files and store the accepted ones; re-ingesting the same files is a no-op."""
    report = ingest_images(
        source.subject_id, list_image_files(source.uri), min_side=params.min_side, max_pixels=params.max_pixels
    )
    if not report.accepted:
        raise NoUsableImagesError(f"no usable image for subject {source.subject_id!r}:\n{report.summary()}")
    # {content hash: caption} of the scene photos; checked before anything is written
    entries = read_captions(source.uri)
    captions = check_captions(source.subject_id, source.class_word, entries, report)
    boxes = check_boxes(source.subject_id, entries, report)  # the subject's region in a scene photo, when given
    catalog = load_catalog(catalog_uri)
    catalog.write_subject(source.subject_id, class_word=source.class_word)
    stored = subject_image_hashes(catalog, source.subject_id)  # a rerun stores only the images still missing
    images = [
        SubjectImage(
            subject=source.subject_id,
            content_hash=image.content_hash,
            uri=catalog.put_bytes(image.to_png(), suffix=".png"),
            width=image.width,
            height=image.height,
        )
        for image in report.accepted
        if image.content_hash not in stored
    ]
    if images:
        catalog.write_subject_images(source.subject_id, images)
    if captions:  # after the images they describe: a crash in between leaves images without captions, never the reverse
        catalog.write_subject_captions(source.subject_id, captions)
    if boxes:  # after their captions, by the same rule
        catalog.write_subject_boxes(source.subject_id, boxes)
    return SubjectIngested(
        subject=source.subject_id,
        accepted=len(report.accepted),
        captioned=len(captions),
        already_stored=len(report.accepted) - len(images),
        rejected=[(r.name, r.reason) for r in report.rejected],
        duplicates=[(d.name, d.duplicate_of) for d in report.duplicates],
    )


@flow(name="ingest-subjects")
def ingest_subjects(config: IngestConfig) -> dict[str, Any]:
    """One task per subject. A subject that fails is reported and the others are still ingested."""
    results = fan_out(
        ingest_subject,
        [{"catalog_uri": config.catalog, "source": s, "params": config.ingest} for s in config.subjects],
        runner=config.runner,
        label="ingest-subjects",
        keep_failures=True,
    )
    ingested = [r for r in results if isinstance(r, SubjectIngested)]
    failed = {s.subject_id: str(r) for s, r in zip(config.subjects, results) if isinstance(r, BaseException)}
    accepted, skipped = sum(r.accepted for r in ingested), sum(r.already_stored for r in ingested)
    get_run_logger().info(
        "ingest-subjects: %d of %d accepted images already in the catalog (skipped), %d stored", skipped, accepted,
        accepted - skipped,
    )
    create_markdown_artifact(key="ingest-summary", markdown=_summary(ingested, failed), description="ingest-subjects")
    if not ingested:
        raise NoUsableImagesError("no subject could be ingested:\n" + "\n".join(f"- {k}: {v}" for k, v in failed.items()))
    # `reports` as plain dicts: the flow's result is what `cones run ingest --json` prints
    return {"ingested": [r.subject for r in ingested], "failed": failed, "reports": [asdict(r) for r in ingested]}


def _summary(ingested: list[SubjectIngested], failed: dict[str, str]) -> str:
    lines = ["# Ingest", "", "| subject | accepted | rejected | duplicates |", "|---|---|---|---|"]
    lines += [f"| {r.subject} | {r.accepted} | {len(r.rejected)} | {len(r.duplicates)} |" for r in ingested]
    for r in ingested:
        lines += [f"- `{r.subject}/{name}` rejected: {reason}" for name, reason in r.rejected]
        lines += [f"- `{r.subject}/{name}` duplicates `{first}`" for name, first in r.duplicates]
    lines += [f"- **{subject} failed**: {reason}" for subject, reason in failed.items()]
    return "\n".join(lines)
