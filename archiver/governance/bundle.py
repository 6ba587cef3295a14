"""eDiscovery export: a BagIt bag (RFC 8493) of a tenant's media that a court, a regulator or
opposing counsel can check with any BagIt tool and browse with nothing but a web browser.

    bag/
      bagit.txt, bag-info.txt           who exported what, when, with which query
      manifest-sha256.txt               every payload file's SHA-256
      tagmanifest-sha256.txt            the tag files' SHA-256 (written by the bagit library)
      data/media/<chat>/<day>/NNNNNN-<id><ext>   the files, streamed from the bucket
      data/thumbnails/...               their thumbnails, where made
      data/metadata.jsonl               MediaInfo of each, with its conversation and path
      data/audit.jsonl                  the ledger records of those media and the audit
                                        events that name them
      data/index.html                   per chat, per day, thumbnails; works offline

Each file is streamed from the bucket to disk and hashed on the way (flat memory, one
read). A file whose bytes differ from its archived SHA-256 is not silently exported: the
export stops naming it (run ``media verify``). A ``.zip`` output is the bag, zipped.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bagit
from botocore.exceptions import ClientError
from sqlalchemy import Engine, func, or_, update
from sqlmodel import Session, col, select

from archiver.errors import AppError, ConfigError
from archiver.governance import audit, fixity
from archiver.infra.db import session_scope
from archiver.media import query as queries
from archiver.media import renditions
from archiver.media.query import MediaQuery
from archiver.media.shapes import media_info
from archiver.tables import AuditEvent, ExportJob, LedgerEntry, Media, Status, Tenant, utcnow

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BLOCK = 1024 * 1024
PAGE = 500
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ExportError(AppError):
    """The export cannot be made as asked (a file differs from its record, a bad path)."""


@dataclass
class Exported:
    files: int = 0
    bytes: int = 0
    thumbnails: int = 0
    skipped: list[str] = field(default_factory=list)  # stored outside the tenant's bucket

    def doc(self, out: Path) -> dict[str, Any]:
        return {
            "bag": str(out),
            "files": self.files,
            "bytes": self.bytes,
            "thumbnails": self.thumbnails,
            "skipped": self.skipped[:100],
        }


def safe(text: str | None, fallback: str) -> str:
    """A path segment from opaque text: nothing but [A-Za-z0-9._-], never . or .."""
    cleaned = _UNSAFE.sub("_", text or "").strip("._")[:60]
    return cleaned or fallback


def rows(engine: Engine, tenant: Tenant, query: MediaQuery) -> Iterator[Media]:
    """The tenant's archived rows ``query`` names, oldest first, a page at a time."""
    after = None
    while True:
        page = MediaQuery(
            **{
                **query.__dict__,
                "limit": PAGE,
                "after": after,
                "order": "asc",
                "status": "archived",
            }
        )
        with session_scope(engine) as session:
            found = queries.search(session, tenant_id=tenant.saved_id, query=page)
            for row in found:
                session.expunge(row)
        yield from found
        if len(found) < PAGE:
            return
        last = found[-1]
        assert last.received_at is not None and last.pk is not None
        after = (last.received_at, last.pk)


def export(
    engine: Engine,
    tenant: Tenant,
    query: MediaQuery,
    *,
    s3: S3Client,
    out: Path,
    who: str,
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> Exported:
    """Write the bag of ``query``'s media at ``out`` (a folder that must not exist yet, or a
    ``.zip`` file)."""
    if out.exists():
        raise ConfigError(f"{out} already exists: give a new folder or .zip file")
    if not out.parent.is_dir():
        raise ConfigError(f"folder {out.parent} does not exist")
    zipped = out.suffix.lower() == ".zip"
    work = Path(tempfile.mkdtemp(prefix=".bag-", dir=out.parent)) if zipped else out
    try:
        if not zipped:
            work.mkdir()
        done = _write_bag(
            engine, tenant, query, s3=s3, bag=work, who=who, now=now, progress=progress
        )
        if zipped:
            _zip(work, out)
        return done
    except BaseException:
        if not zipped:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if zipped:
            shutil.rmtree(work, ignore_errors=True)


def _write_bag(
    engine: Engine,
    tenant: Tenant,
    query: MediaQuery,
    *,
    s3: S3Client,
    bag: Path,
    who: str,
    now: datetime,
    progress: Callable[[int], None] | None,
) -> Exported:
    data = bag / "data"
    data.mkdir()
    manifest: list[tuple[str, str]] = []  # (sha256, path inside the bag)
    done = Exported()
    entries: list[dict[str, Any]] = []
    pks: list[int] = []
    media_ids: list[str] = []
    with (data / "metadata.jsonl").open("w", encoding="utf-8") as metadata:
        for n, row in enumerate(rows(engine, tenant, query), start=1):
            place = renditions.located(
                object_key=row.object_key,
                s3_url=row.s3_url,
                bucket=row.bucket,
                tenant_bucket=tenant.s3_bucket,
            )
            if place is None:
                done.skipped.append(row.media_id)
                continue
            bucket, key = place
            chat = safe(row.chat, "unknown-chat")
            day = (row.message_at or row.received_at or now).strftime("%Y-%m-%d")
            ext = Path(key).suffix[:10] if "." in Path(key).name else ""
            name = f"{n:06d}-{safe(row.media_id, 'media')}{ext}"
            relative = f"media/{chat}/{day}/{name}"
            try:
                size, sha256 = _copy(s3, bucket, key, data / relative)
            except fixity.ObjectMissing as exc:
                raise ExportError(
                    f"media {row.media_id}: {exc} (run `titan-archiver media verify`); "
                    "nothing was exported"
                ) from exc
            if row.sha256 is not None and sha256 != row.sha256:
                raise ExportError(
                    f"media {row.media_id}: the bucket's bytes differ from the archived SHA-256 "
                    "(run `titan-archiver media verify`); nothing was exported"
                )
            manifest.append((sha256, f"data/{relative}"))
            thumb = _thumbnail(s3, bucket, row, data, f"thumbnails/{chat}/{day}/{name}.webp")
            if thumb is not None:
                manifest.append(thumb)
                done.thumbnails += 1
            doc = media_info(row, tenant=tenant.name) | {
                "conversation": row.chat,
                "path": relative,
                "thumbnail": thumb[1].removeprefix("data/") if thumb else None,
            }
            metadata.write(json.dumps(doc, default=str) + "\n")
            entries.append(doc)
            pks.append(row.saved_pk)
            media_ids.append(row.media_id)
            done.files += 1
            done.bytes += size
            if progress is not None:
                progress(1)
    manifest.append((_sha256_of(data / "metadata.jsonl"), "data/metadata.jsonl"))
    (data / "audit.jsonl").write_text(_audit(engine, tenant, pks, media_ids), encoding="utf-8")
    manifest.append((_sha256_of(data / "audit.jsonl"), "data/audit.jsonl"))
    (data / "index.html").write_text(index_html(tenant.name, entries, now), encoding="utf-8")
    manifest.append((_sha256_of(data / "index.html"), "data/index.html"))
    _tag_files(bag, tenant, query, manifest, who=who, now=now)
    return done


def _copy(s3: S3Client, bucket: str, key: str, target: Path) -> tuple[int, str]:
    """Stream one object to ``target``: (size, SHA-256)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in fixity.MISSING:
            raise fixity.ObjectMissing(f"s3://{bucket}/{key} is not in the bucket") from exc
        raise
    digest, size = hashlib.sha256(), 0
    try:
        with target.open("wb") as out:
            for chunk in body.iter_chunks(BLOCK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    finally:
        body.close()
    return size, digest.hexdigest()


def _thumbnail(
    s3: S3Client, bucket: str, row: Media, data: Path, relative: str
) -> tuple[str, str] | None:
    found = renditions.find(row.renditions, renditions.THUMBNAIL)
    if found is None:
        return None
    try:
        _, sha256 = _copy(s3, bucket, found.key, data / relative)
    except fixity.ObjectMissing:
        return None
    return sha256, f"data/{relative}"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(BLOCK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _audit(engine: Engine, tenant: Tenant, pks: list[int], media_ids: list[str]) -> str:
    """The ledger records of the exported media (with their links) and the audit events
    that name them, one JSON object a line."""
    lines: list[str] = []
    with session_scope(engine) as session:
        for start in range(0, len(pks), PAGE):
            chunk = pks[start : start + PAGE]
            for entry in session.exec(
                select(LedgerEntry)
                .where(
                    col(LedgerEntry.tenant_id) == tenant.saved_id, col(LedgerEntry.ref).in_(chunk)
                )
                .where(col(LedgerEntry.kind).in_(["archived", "erased"]))
                .order_by(col(LedgerEntry.seq))
            ):
                lines.append(
                    json.dumps(
                        {
                            "record": "ledger",
                            "seq": entry.seq,
                            "kind": entry.kind,
                            "body": json.loads(entry.body),
                            "prevHash": entry.prev_hash,
                            "hash": entry.hash,
                        }
                    )
                )
        lines += [json.dumps(event) for event in _events_naming(session, tenant, media_ids)]
    return "".join(line + "\n" for line in lines)


def _events_naming(
    session: Session, tenant: Tenant, media_ids: list[str]
) -> Iterator[dict[str, Any]]:
    wanted = set(media_ids)
    events = session.exec(
        select(AuditEvent)
        .where(
            col(AuditEvent.tenant_id) == tenant.saved_id,
            or_(col(AuditEvent.action).like("media.%"), col(AuditEvent.action).like("tenant.%")),
        )
        .order_by(col(AuditEvent.id))
    )
    for event in events:
        detail = json.loads(event.detail) if event.detail else {}
        named = set(detail.get("ids") or []) | set(detail.get("mediaIds") or [])
        if event.action.startswith("tenant.") or named & wanted:
            yield {
                "record": "audit",
                "id": event.id,
                "at": event.at.isoformat() if event.at else None,
                "actor": event.actor,
                "action": event.action,
                "detail": detail,
                "sealedSeq": event.sealed_seq,
            }


def _tag_files(
    bag: Path,
    tenant: Tenant,
    query: MediaQuery,
    manifest: list[tuple[str, str]],
    *,
    who: str,
    now: datetime,
) -> None:
    """bagit.txt and the payload manifest (hashes taken while copying: no second read),
    then the bagit library writes bag-info.txt with Payload-Oxum and the tag manifest."""
    (bag / "bagit.txt").write_text(
        "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n", encoding="utf-8"
    )
    with (bag / "manifest-sha256.txt").open("w", encoding="utf-8") as out:
        for sha256, path in sorted(manifest, key=lambda item: item[1]):
            out.write(f"{sha256}  {path}\n")
    files = [bag / path for _, path in manifest]
    (bag / "bag-info.txt").write_text("Bag-Software-Agent: titan-archiver\n", encoding="utf-8")
    made = bagit.Bag(str(bag))
    filters = {
        k: v
        for k, v in query.__dict__.items()
        if v is not None and k not in ("limit", "after", "order", "status")
    }
    made.info.update(
        {
            "Source-Organization": tenant.name,
            "Contact-Name": who,
            "Bagging-Date": now.date().isoformat(),
            "Bagging-Time": now.isoformat(),
            "External-Description": "WhatsApp media archived by titan-archiver, exported for "
            "eDiscovery; data/index.html browses it offline",
            "External-Identifier": f"titan-archiver:{tenant.name}:{now.isoformat()}",
            "Internal-Sender-Description": "query: "
            + json.dumps(filters, default=str, sort_keys=True),
            "Payload-Oxum": f"{sum(p.stat().st_size for p in files)}.{len(files)}",
            "Bag-Count": "1 of 1",
        }
    )
    made.save(manifests=False)


def _zip(bag: Path, out: Path) -> None:
    """The bag as one .zip (a folder named like the file inside, as BagIt tools expect);
    media is stored, not recompressed."""
    root = out.stem
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(p for p in bag.rglob("*") if p.is_file()):
            archive.write(path, f"{root}/{path.relative_to(bag).as_posix()}")
    partial.rename(out)


def index_html(tenant: str, entries: list[dict[str, Any]], now: datetime) -> str:
    """One page, no script, no network: each chat, each day, its media as thumbnails linking
    to the files (relative links, so it works from the file system)."""
    by_chat: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for doc in entries:
        chat = str(doc.get("conversation") or "unknown chat")
        day = str(doc["path"].split("/")[2])
        by_chat.setdefault(chat, {}).setdefault(day, []).append(doc)
    esc = html.escape
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>WhatsApp media of {esc(tenant)}</title>",
        "<style>body{font:15px system-ui,sans-serif;margin:2em}figure{display:inline-block;"
        "width:180px;margin:6px;vertical-align:top}img{max-width:170px;max-height:170px}"
        "figcaption{font-size:12px;word-break:break-all}</style>",
        f"<h1>WhatsApp media of {esc(tenant)}</h1>",
        f"<p>{len(entries)} files, exported {esc(now.isoformat())}. Each file's SHA-256 is in "
        "<code>manifest-sha256.txt</code> and <code>metadata.jsonl</code>.</p>",
    ]
    for chat in sorted(by_chat):
        days = by_chat[chat]
        parts.append(f"<section><h2>{esc(chat)}</h2>")
        for day in sorted(days):
            parts.append(f"<h3>{esc(day)}</h3>")
            for doc in days[day]:
                link = esc(doc["path"])
                label = esc(f"{doc.get('type')} {doc.get('senderName') or doc.get('sender') or ''}")
                thumb = doc.get("thumbnail")
                picture = (
                    f'<img src="{esc(thumb)}" alt="{label}" loading=lazy>'
                    if thumb
                    else f"<span>{esc(str(doc.get('type')))}</span>"
                )
                parts.append(
                    f'<figure data-media="{esc(doc["id"])}"><a href="{link}">{picture}</a>'
                    f"<figcaption>{label}<br>{esc(str(doc.get('size')))} bytes<br>"
                    f"<code>{esc(str(doc.get('sha256'))[:16])}…</code></figcaption></figure>"
                )
        parts.append("</section>")
    parts.append("</html>")
    return "\n".join(parts)


def archived_count(session: Session, tenant: Tenant) -> int:
    """An upper bound for the progress bar: the tenant's archived rows."""
    return int(
        session.exec(
            select(func.count())
            .select_from(Media)
            .where(
                col(Media.tenant_id) == tenant.saved_id, col(Media.status) == Status.ARCHIVED.value
            )
        ).one()
    )


# -- exports asked for through the admin API ---------------------------------------------

FILTER_FIELDS = ("chat", "sender", "since", "until")


def queue_job(
    session: Session, *, tenant: Tenant, filters: dict[str, str], export_dir: str, zipped: bool
) -> ExportJob:
    """Record an export to run (its bag under ``export_dir``); the caller publishes it."""
    job = ExportJob(
        tenant_id=tenant.saved_id,
        tenant=tenant.name,
        query=json.dumps(filters, sort_keys=True),
        status="queued",
        path="",
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    name = f"{safe(tenant.name, 'tenant')}-{job.id:06d}" + (".zip" if zipped else "")
    job.path = str(Path(export_dir) / name)
    session.add(job)
    session.flush()
    return job


def run_job(engine: Engine, job_id: int, *, s3_for: Callable[[Tenant], S3Client]) -> str:
    """Run one queued export (a worker's task); its final status. Claimed with a
    conditional update, so a redelivered task never runs it twice."""
    with session_scope(engine) as session:
        claimed = (
            session.connection()
            .execute(
                update(ExportJob)
                .where(col(ExportJob.id) == job_id, col(ExportJob.status) == "queued")
                .values(status="running")
            )
            .rowcount
        )
        job = session.get(ExportJob, job_id)
        if not claimed or job is None:
            return "skipped"
        tenant = session.get(Tenant, job.tenant_id)
        session.expunge(job)
    status, result, error = "failed", None, None
    try:
        if tenant is None:
            raise ExportError("the tenant no longer exists")
        query = queries.parse_query(json.loads(job.query))
        done = export(
            engine, tenant, query, s3=s3_for(tenant), out=Path(job.path), who="admin", now=utcnow()
        )
        status, result = "done", json.dumps(done.doc(Path(job.path)))
    except AppError as exc:
        error = str(exc)
    finally:
        with session_scope(engine) as session:
            session.execute(
                update(ExportJob)
                .where(col(ExportJob.id) == job_id)
                .values(status=status, result=result, error=error, finished_at=utcnow())
            )
            audit.record(
                session,
                actor="admin",
                action="media.export-bundle",
                tenant_id=job.tenant_id,
                tenant=job.tenant,
                detail={"job": job_id, "status": status, "path": job.path, "error": error},
            )
    return status
