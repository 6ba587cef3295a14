"""The queue contract between receiver and worker: task names, queue names, which queue a
media item goes to, and how small rows are batched into tasks (pure; archiver/infra/broker.py
talks to the broker)."""

from __future__ import annotations

ARCHIVE_TASK = "worker.archive_media"
ARCHIVE_BATCH_TASK = "worker.archive_batch"  # several small rows: one claim, one task
MAX_BATCH = 16
SWEEP_TASK = "worker.sweep_stuck"
DISPATCH_TASK = "worker.dispatch_due"  # publishes retries whose time has come
PROBE_TASK = "worker.probe_paused"  # re-checks tenants a worker paused
RETENTION_TASK = "worker.retention"  # deletes what tenants' retention periods expired
SEAL_TASK = "worker.seal"  # seals new archive records and audit events into the ledger
EXPORT_TASK = "worker.export_bundle"  # an eDiscovery bag the admin API asked for
FIXITY_TASK = "worker.fixity"  # reads archived objects back within each tenant's budget
RENDER_TASK = "worker.render_media"  # thumbnails, posters, playable audio, after archiving
ARCHIVE_QUEUE = "archive"  # photos, voice notes, stickers, small documents
LARGE_QUEUE = "archive-large"  # videos and large documents, so a burst of them delays no photo
QUEUES = (ARCHIVE_QUEUE, LARGE_QUEUE)
RENDER_QUEUE = "render"  # its own workers (Procfile: render), so rendering never delays archiving
_LARGE_WHEN_UNSIZED = frozenset({"video", "document"})


def queue_for(file_length: int | None, message_type: str, *, large_bytes: int) -> str:
    """The queue a media item's transfer goes to: by its announced size, else by its type."""
    if file_length is None:
        return LARGE_QUEUE if message_type in _LARGE_WHEN_UNSIZED else ARCHIVE_QUEUE
    return LARGE_QUEUE if file_length >= large_bytes else ARCHIVE_QUEUE


def batches(pks: list[int], *, spread: int = 8, most: int = MAX_BATCH) -> list[list[int]]:
    """Split small rows into tasks: one row each while there are few (every worker process
    gets one), then growing batches as load grows, up to ``most`` rows, so a burst costs one
    claim and one task per batch instead of per file."""
    size = max(1, min(most, len(pks) // spread))
    return [pks[i : i + size] for i in range(0, len(pks), size)]
