"""Worker memory while archiving large files: one at a time, or several at once against the
shared upload-buffer budget (``ARCHIVER_WORKER_BUFFER_BYTES``).

    .venv/bin/python -m bench.worker_memory [--sizes-mb 64,70,200] [--part-size-mb 8]
        [--latency-ms 40] [--parts-in-flight 4]
    .venv/bin/python -m bench.worker_memory --concurrent 4 --sizes-mb 200 [--latency-ms 40]
        [--budgets-mb 64,0]

Starts its own Redis, S3 endpoint (moto), Titan simulator and one worker process on
127.0.0.1. One at a time (concurrency 1): the pool child's peak RSS is read from the kernel
(VmHWM, reset through /proc/PID/clear_refs before each file), not sampled. ``--concurrent
N``: a worker of N pool processes archives N files of each size at once, once per budget in
``--budgets-mb`` (0: a budget too large to bind, i.e. every transfer keeps its own
``parts in flight + 1`` parts, as before the budget), side by side in one run; the growth is
the peak of the pool's summed RSS (sampled every 10 ms) over its idle sum, and the sum of
each child's own peak (VmHWM) bounds it from above.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from archiver.infra import migrate
from archiver.infra.broker import make_celery, publish_archive
from archiver.infra.db import make_engine, session_scope
from archiver.media import query as queries
from archiver.secrets_box import SecretBox
from archiver.settings import Settings, load_settings
from archiver.tables import Status
from archiver.tenants.tenants import create_tenant
from devstack import processes, services
from devstack.fixtures import local_spec, record_item
from devstack.tcp_proxy import TcpProxy
from receiver.envelope import media_item
from titan_simulator.sender import Simulator

MB = 1_000_000
MiB = 1024 * 1024
UNBOUND = 1 << 40  # a budget no run reaches: the behaviour before there was one


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def pool_children(pid: int, count: int = 1) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) >= count:
            return [int(c) for c in children]
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {count} worker pool processes")


def pool_child(pid: int) -> int:
    return pool_children(pid)[0]


Archive = Callable[[list[int]], float]  # sizes, archived at once -> seconds


@contextlib.contextmanager
def worker_archiving(
    *, concurrency: int, env: dict[str, str], latency_ms: float
) -> Iterator[tuple[Archive, list[int]]]:
    """A worker of ``concurrency`` pool processes with its Redis, S3, Titan simulator and
    SQLite: yields a function that archives files of the given sizes at once, and the
    pool's pids."""
    master = secrets.token_urlsafe(24)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    db_url = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    with services.redis_server() as redis_url, services.s3_server() as s3_url:
        proxy = None
        if latency_ms:
            proxy = TcpProxy(int(s3_url.rsplit(":", 1)[1]), latency=latency_ms / 1000)
            s3_url = f"http://127.0.0.1:{proxy.port}"
        env = {
            "ARCHIVER_DATABASE_URL": db_url,
            "ARCHIVER_BROKER_URL": redis_url,
            "ARCHIVER_SECRET_KEY": master,
        } | env
        settings = load_settings(database_url=db_url, broker_url=redis_url, secret_key=master)
        simulator = services.start_simulator("bench-sim")
        worker = processes.start_process(
            "bench-worker", processes.worker_argv(concurrency=concurrency), env
        )
        try:
            sim = Simulator(simulator.url)
            sim.add_account(api_key="titan_bench", account="bench")
            services.s3_client(s3_url).create_bucket(Bucket="bench")
            with session_scope(engine) as session:
                tenant, _ = create_tenant(
                    session,
                    box=SecretBox(master),
                    spec=local_spec(
                        "bench",
                        bucket="bench",
                        s3_endpoint=s3_url,
                        titan_url=simulator.url,
                        titan_api_key="titan_bench",
                    ),
                )
            celery = make_celery(settings)

            def archive(sizes: list[int]) -> float:
                pks = []
                for size in sizes:
                    envelope = sim.make_media(account="bench", message_type="video", size=size)
                    item = media_item(envelope.envelope)
                    assert item is not None
                    pks.append(record_item(engine, tenant=tenant, item=item).pk)
                started = time.monotonic()
                for pk in pks:
                    publish_archive(celery, pk=pk)

                def done() -> bool:
                    with session_scope(engine) as session:
                        rows = [queries.get_row(session, pk=pk) for pk in pks]
                    assert all(r is not None and r.status != Status.FAILED for r in rows), rows
                    return all(r is not None and r.status == Status.ARCHIVED for r in rows)

                processes.wait_until(done, timeout=900, interval=0.05)
                return time.monotonic() - started

            archive([100_000] * concurrency)  # warm-up: imports, connections, clients
            yield archive, pool_children(worker.proc.pid, concurrency)
            celery.close()
            sim.close()
        finally:
            worker.stop()
            simulator.process.stop()
            engine.dispose()
            if proxy is not None:
                proxy.close()


def one_at_a_time(args: argparse.Namespace, sizes: list[int], env: dict[str, str]) -> None:
    with worker_archiving(concurrency=1, env=env, latency_ms=args.latency_ms) as (archive, pids):
        child = pids[0]
        idle_kb = status_kb(child, "VmRSS")
        print(f"worker pool process pid {child}")
        heads = ("idle RSS", "peak RSS", "peak-idle")
        print(
            f"{'file':>8} " + " ".join(f"{h:>10}" for h in heads) + f" {'seconds':>8} {'MB/s':>7}"
        )
        for size in sizes:
            Path(f"/proc/{child}/clear_refs").write_text("5")  # reset VmHWM to current RSS
            seconds = archive([size])
            peak_kb = status_kb(child, "VmHWM")
            print(
                f"{size // MB:>6}MB {idle_kb / 1024:>8.1f}MB {peak_kb / 1024:>8.1f}MB "
                f"{(peak_kb - idle_kb) / 1024:>8.1f}MB {seconds:>8.2f} "
                f"{size / MB / seconds:>7.1f}"
            )


class Sampler:
    """The highest summed RSS of ``pids``, sampled every 10 ms while running."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.most_kb = pids, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.most_kb = max(self.most_kb, sum(status_kb(p, "VmRSS") for p in self.pids))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def at_once(args: argparse.Namespace, sizes: list[int], env: dict[str, str]) -> None:
    budgets = [int(b) * MiB or UNBOUND for b in args.budgets_mb.split(",")]
    heads = ("idle sum", "peak sum", "growth", "sum of peaks", "seconds", "MB/s")
    print(f"{'budget':>10} {'files':>10} " + " ".join(f"{h:>12}" for h in heads))
    for budget in budgets:
        with worker_archiving(
            concurrency=args.concurrent,
            env=env | {"ARCHIVER_WORKER_BUFFER_BYTES": str(budget)},
            latency_ms=args.latency_ms,
        ) as (archive, pids):
            idle_kb = sum(status_kb(p, "VmRSS") for p in pids)
            shown = "unbounded" if budget == UNBOUND else f"{budget // MiB} MiB"
            for size in sizes:
                for pid in pids:
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
                with Sampler(pids) as sampler:
                    seconds = archive([size] * args.concurrent)
                peaks_kb = sum(status_kb(p, "VmHWM") for p in pids)
                moved = size * args.concurrent / MB
                print(
                    f"{shown:>10} {f'{args.concurrent}x{size // MB}MB':>10} "
                    f"{idle_kb / 1024:>10.1f}MB {sampler.most_kb / 1024:>10.1f}MB "
                    f"{(sampler.most_kb - idle_kb) / 1024:>10.1f}MB "
                    f"{(peaks_kb - idle_kb) / 1024:>10.1f}MB {seconds:>12.2f} "
                    f"{moved / seconds:>12.1f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="64,70,200")
    parser.add_argument("--part-size-mb", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="S3 round trip to add")
    parser.add_argument("--parts-in-flight", type=int, default=0, help="0: the default")
    parser.add_argument("--concurrent", type=int, default=0, help="files archived at once")
    parser.add_argument(
        "--budgets-mb", default="64,0", help="--concurrent: the budgets to compare (0: none)"
    )
    args = parser.parse_args()
    sizes = [int(s) * MB for s in args.sizes_mb.split(",")]
    env = {"ARCHIVER_PART_SIZE": str(args.part_size_mb * MiB)}
    if args.parts_in_flight:
        env["ARCHIVER_UPLOAD_PARTS_IN_FLIGHT"] = str(args.parts_in_flight)
    in_flight = args.parts_in_flight or Settings.model_fields["upload_parts_in_flight"].default
    far = f", S3 {args.latency_ms:g} ms away" if args.latency_ms else ""
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, python {sys.version.split()[0]}"
    )
    print(f"part size: {args.part_size_mb} MiB, {in_flight} parts in flight{far}")
    if args.concurrent:
        at_once(args, sizes, env)
    else:
        one_at_a_time(args, sizes, env)


if __name__ == "__main__":
    main()
