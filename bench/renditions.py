"""Renditions: what a grid page costs the browser, what a render costs the worker.

    .venv/bin/python -m bench.renditions [--media-dir /tmp/bench-media] [--page 50]
        [--before-tree /tmp/wt]

On 127.0.0.1 it starts Redis, an S3 endpoint (moto), a SQLite database, one render worker
(prefork, concurrency 1, as the Procfile's) and the receiver, and puts realistic files in
the tenant's bucket (bench/media_files.py: 1600 px and 12 MP photos, 16 MB 720p videos,
45 s Ogg voice notes, stickers, 8-page PDFs, and one 200 MB 1080p video), each with its
archived row. Then:

1. renditions per second: the render worker renders a page of ``--page`` rows;
2. peak memory of the render pool process above its idle RSS (after a warm-up render of
   each kind), per kind, for the 200 MB video too; read from the kernel (VmHWM, reset
   through /proc/PID/clear_refs before each file), not sampled;
3. bytes a browser (headless Chromium, through the DevTools protocol's encoded lengths)
   transfers to show that page of the dashboard's grid, scrolled to its end: with this
   checkout's receiver, and with ``--before-tree``'s (a checkout from before renditions,
   e.g. ``git worktree add /tmp/wt cfa0638``) against the same database and bucket.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from archiver.infra import migrate
from archiver.infra.broker import make_celery
from archiver.infra.db import make_engine, session_scope
from archiver.media.render_requests import publish_render
from archiver.secrets_box import SecretBox
from archiver.settings import load_settings
from archiver.tables import Media, RenderState, Status, utcnow
from archiver.tenants.api_keys import issue_key
from archiver.tenants.tenants import create_tenant
from bench import media_files
from bench.worker_memory import pool_child, status_kb
from devstack import processes, services
from devstack.fixtures import local_spec

# A page as a business's archive shows it: photos most, then videos and voice notes.
PAGE_MIX = (
    ("photo", "image", "image/jpeg", 22),
    ("photo-hd", "image", "image/jpeg", 4),
    ("video", "video", "video/mp4", 10),
    ("voice-note", "audio", "audio/ogg; codecs=opus", 8),
    ("sticker", "sticker", "image/webp", 3),
    ("document", "document", "application/pdf", 3),
)
MEMORY_KINDS = (
    ("photo-hd", "image", "image/jpeg"),
    ("voice-note", "audio", "audio/ogg; codecs=opus"),
    ("document", "document", "application/pdf"),
    ("video", "video", "video/mp4"),
    ("video-200mb", "video", "video/mp4"),
)


class Bench:
    def __init__(self, engine: Any, s3: Any, bucket: str, tenant_id: int, files: dict[str, Path]):
        self.engine, self.s3, self.bucket = engine, s3, bucket
        self.tenant_id, self.files = tenant_id, files
        self.count = 0

    def add(self, name: str, message_type: str, mime: str, *, age: timedelta) -> int:
        """Put one file in the bucket under a key of its own, with its archived row."""
        self.count += 1
        key = f"bench/{self.count:05d}-{self.files[name].name}"
        self.s3.upload_file(str(self.files[name]), self.bucket, key)
        when = utcnow() - age
        row = Media(
            tenant_id=self.tenant_id,
            session="support",
            media_id=f"M{self.count:05d}",
            message_type=message_type,
            mime_type=mime,
            strategy="download",
            status=Status.ARCHIVED.value,
            bucket=self.bucket,
            object_key=key,
            size=self.files[name].stat().st_size,
            file_length=self.files[name].stat().st_size,
            received_at=when,
            archived_at=when,
            updated_at=when,
            render_state=RenderState.PENDING.value,
            filename=self.files[name].name if message_type == "document" else None,
        )
        with session_scope(self.engine) as session:
            session.add(row)
            session.flush()
            return row.pk or 0

    def rendered(self, pks: list[int]) -> bool:
        with session_scope(self.engine) as session:
            states = list(session.exec(select(Media.render_state).where(col(Media.pk).in_(pks))))
        return all(state != RenderState.PENDING.value for state in states)

    def renditions(self, pks: list[int]) -> tuple[int, int]:
        """(renditions made, their bytes) of these rows."""
        from archiver.media.renditions import loads

        made = size = 0
        with session_scope(self.engine) as session:
            for text in session.exec(select(Media.renditions).where(col(Media.pk).in_(pks))):
                for rendition in loads(text):
                    made += 1
                    size += rendition.size
        return made, size


def grid_bytes(url: str, api_key: str, page_size: int) -> tuple[int, int, int]:
    """(all bytes, media bytes, media requests) a browser transfers to show one grid page,
    scrolled to its end, until the network is quiet."""
    from playwright.sync_api import sync_playwright

    executable = processes.chromium()
    if executable is None:
        raise SystemExit("no Chromium here: apt-get install chromium")
    lengths: dict[str, int] = {}
    kinds: dict[str, str] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(f"{url}/ui/login")
        page.get_by_label("API key").fill(api_key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{url}/ui/")
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.on("Network.responseReceived", lambda e: kinds.update({e["requestId"]: e["type"]}))
        cdp.on(
            "Network.loadingFinished",
            lambda e: lengths.update({e["requestId"]: int(e["encodedDataLength"])}),
        )
        page.goto(f"{url}/ui/media?limit={page_size}")
        page.wait_for_load_state("networkidle")
        height = int(page.evaluate("document.body.scrollHeight"))
        for y in range(0, height + 900, 600):
            page.evaluate(f"window.scrollTo(0, {y})")
            page.wait_for_timeout(150)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(2000)  # media elements fetch on after the load event
        context.close()
        browser.close()
    media = [n for rid, n in lengths.items() if kinds.get(rid) in ("Image", "Media")]
    return sum(lengths.values()), sum(media), len(media)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media-dir", default=str(Path(tempfile.gettempdir()) / "bench-media"))
    parser.add_argument("--page", type=int, default=50)
    parser.add_argument("--before-tree", default=None, help="a checkout from before renditions")
    args = parser.parse_args()
    files = media_files.library(Path(args.media_dir))
    master = secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rend-"))
    db_url = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    python = sys.version.split()[0]
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {python}")
    print(
        "files: " + ", ".join(f"{n} {s / 1e6:.2f} MB" for n, s in media_files.sizes(files).items())
    )

    with services.redis_server() as redis_url, services.s3_server() as s3_url:
        env = {
            "ARCHIVER_DATABASE_URL": db_url,
            "ARCHIVER_BROKER_URL": redis_url,
            "ARCHIVER_SECRET_KEY": master,
        }
        settings = load_settings(database_url=db_url, broker_url=redis_url, secret_key=master)
        s3 = services.s3_client(s3_url)
        s3.create_bucket(Bucket="bench")
        with session_scope(engine) as session:
            tenant, _ = create_tenant(
                session,
                box=SecretBox(master),
                spec=local_spec("bench", bucket="bench", s3_endpoint=s3_url),
            )
            api_key = issue_key(session, tenant_id=tenant.id or 0)
        bench = Bench(engine, s3, "bench", tenant.id or 0, files)
        celery = make_celery(settings)
        argv = [*processes.worker_argv(concurrency=1), "-n", "bench-render@%h"]
        worker = processes.start_process(
            "bench-render",
            argv,
            {**env, "ARCHIVER_WORKER_QUEUES": "render", "ARCHIVER_WORKER_METRICS_PORT": "0"},
        )
        receivers: list[processes.Process] = []
        try:

            def render(pks: list[int]) -> float:
                started = time.monotonic()
                publish_render(celery, pks=pks)
                processes.wait_until(lambda: bench.rendered(pks), timeout=1800, interval=0.05)
                return time.monotonic() - started

            # Warm-up: one of each kind, so every library is loaded before "idle" is read.
            old = timedelta(days=30)
            render([bench.add(n, t, m, age=old) for n, t, m in MEMORY_KINDS[:4]])
            child = pool_child(worker.proc.pid)
            idle_kb = status_kb(child, "VmRSS")

            page = [
                bench.add(name, kind, mime, age=timedelta(minutes=n))
                for name, kind, mime, count in PAGE_MIX
                for n in range(count)
            ][: args.page]
            seconds = render(page)
            made, made_bytes = bench.renditions(page)
            print(
                f"\n1. render worker (concurrency 1): {len(page)} files in {seconds:.2f} s: "
                f"{len(page) / seconds:.1f} files/s, {made / seconds:.1f} renditions/s "
                f"({made} renditions, {made_bytes / 1e3:.0f} KB in all)"
            )

            print(f"\n2. render pool process: idle RSS {idle_kb / 1024:.1f} MB (pid {child})")
            print(f"{'file':>12} {'size':>10} {'peak RSS':>10} {'peak-idle':>10} {'seconds':>8}")
            for name, kind, mime in MEMORY_KINDS:
                pk = bench.add(name, kind, mime, age=old)
                Path(f"/proc/{child}/clear_refs").write_text("5")  # VmHWM back to the RSS
                took = render([pk])
                peak_kb = status_kb(child, "VmHWM")
                size = files[name].stat().st_size
                print(
                    f"{name:>12} {size / 1e6:>8.1f}MB {peak_kb / 1024:>8.1f}MB "
                    f"{(peak_kb - idle_kb) / 1024:>8.1f}MB {took:>8.2f}"
                )

            originals = sum(files[n].stat().st_size * c for n, _, _, c in PAGE_MIX)
            print(
                f"\n3. a grid page of {len(page)} items (originals {originals / 1e6:.1f} MB), "
                "bytes a browser transfers to show it:"
            )
            trees: list[tuple[str, Path | None]] = [("after (thumbnails)", None)]
            if args.before_tree:
                trees.insert(0, ("before (originals)", Path(args.before_tree)))
            found = {}
            for label, tree in trees:
                service = services.start_receiver("bench-receiver", env, ready="/healthz", cwd=tree)
                receivers.append(service.process)
                total, media, requests = grid_bytes(service.url, api_key, len(page))
                service.process.stop()
                found[label] = total
                print(
                    f"{label:>20}: {total / 1e6:>8.2f} MB in all, {media / 1e6:>8.2f} MB of "
                    f"media in {requests} requests"
                )
            if len(found) == 2:
                before, after = found.values()
                print(f"{'after/before':>20}: {after / before:.4f} ({before / after:.0f}x less)")
        finally:
            for receiver in receivers:
                receiver.stop()
            worker.stop()
            celery.close()
            engine.dispose()


if __name__ == "__main__":
    main()
