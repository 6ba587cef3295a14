"""Ingest: POST /webhooks/{tenant} with durable accept, against a bare Starlette endpoint.

    .venv/bin/python -m bench.ingest [--seconds 10] [--connections 32] [--database postgres]

Both servers run under the Procfile's own ``web`` command line (one uvicorn process, its
flags exactly; only the host, the port and, for the baseline, the app factory differ) on
127.0.0.1 and get the same closed-loop load (wrk when installed), the receiver at the
production log level (INFO: one JSON line per webhook). Every request is a distinct signed
~1.5 KB media event. Each server first gets ``--warmup`` seconds (2) of the same load, not
measured: connections opened, first-use imports done, as in a server that has run a while.
Afterwards the rows and broker messages are counted: every 202 must be
both.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import redis
from sqlalchemy import Engine, func, text
from sqlmodel import select

from archiver.infra.db import make_engine, session_scope
from archiver.queue import QUEUES
from archiver.secrets_box import SecretBox
from archiver.tables import Media
from archiver.tenants.tenants import TenantSpec, create_tenant
from bench.loadgen import Load, run_load
from devstack import processes, services
from devstack.fixtures import migrated_database


def serve(
    name: str, target: str | None, env: dict[str, str], server: str = "uvicorn"
) -> tuple[processes.Process, str]:
    """The Procfile's web line (or granian's) on a free port; ``target``: another app
    factory."""
    port = processes.free_port()
    argv = (processes.granian_web_argv if server == "granian" else processes.procfile_web_argv)(
        port, target=target
    )
    proc = processes.start_process(name, argv, env)
    url = f"http://127.0.0.1:{port}"
    processes.wait_until(lambda: processes.port_open("127.0.0.1", port), timeout=30)
    return proc, url


# The media table's indexes for lookups by a column (a sender, a chat, a type, a status, a
# message, a time across tenants: the query API's filters, stats and retention, a
# revocation's message). What every insert keeps up for them is what
# --without-filter-indexes measures; not a setting the product offers. Kept either way:
# the keys, the tenant's newest-first listing, the dispatcher's and sweeper's status index
# and the partial ones (no new row enters them).
FILTER_INDEXES = (
    "ix_media_received",
    "ix_media_tenant_chat",
    "ix_media_tenant_from_me",
    "ix_media_tenant_group",
    "ix_media_tenant_message",
    "ix_media_tenant_mime",
    "ix_media_tenant_sender",
    "ix_media_tenant_sender_lid",
    "ix_media_tenant_session",
    "ix_media_tenant_status",
    "ix_media_tenant_type",
)


def add_tenant(engine: Engine, *, master: str, hmac_key: str) -> None:
    """The benches' tenant ``acme``, signing with ``hmac_key``."""
    with session_scope(engine) as session:
        create_tenant(
            session,
            box=SecretBox(master),
            spec=TenantSpec(
                name="acme",
                hmac_key=hmac_key,
                titan_url="http://t",
                titan_api_key="x",
                strategy="download",
                s3_bucket="b",
            ),
        )


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after its name) of every live process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), _stat(int(entry.name))
            except OSError:  # gone meanwhile
                continue


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU time of a process (all its threads) and of its live
    children (granian serves from a worker process it starts) so far."""
    user = system = 0
    for each, fields in _processes():
        if each == pid or int(fields[1]) == pid:
            user += int(fields[11])
            system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def server_cpu_seconds(command: str) -> float:
    """CPU time (user and system) so far of every live process named ``command`` (the
    database server's: postmaster, backends, WAL writer, checkpointer, autovacuum)."""
    ticks = 0
    for pid, fields in _processes():
        try:
            named = Path(f"/proc/{pid}/comm").read_text().strip() == command
        except OSError:
            continue
        if named:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_sampling(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (all threads, idle ones left out) for ``seconds``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "500",
        "--gil",
    ]
    argv += ["--format", "raw", "--output", str(output), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(folded: Path, top: int = 30) -> None:
    """Share of the receiver's samples per function: inclusive (on the stack) and self."""
    inclusive: Counter[str] = Counter()
    alone: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = [
            f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")
        ]
        total += int(samples)
        alone[frames[-1]] += int(samples)
        for frame in set(frames):
            inclusive[frame] += int(samples)
    print(f"profile: {total} samples holding the GIL (py-spy --gil, 500/s); {folded}")
    print(f"{'self %':>7} {'incl %':>7}  function (by own time)")
    for frame, count in alone.most_common(top):
        print(f"{count / total * 100:>7.1f} {inclusive[frame] / total * 100:>7.1f}  {frame}")


def queued_rows(client: redis.Redis) -> int:
    """Rows named by the archive tasks waiting in Redis (a batch task names several)."""
    count = 0
    for queue in QUEUES:
        for raw in client.lrange(queue, 0, -1):
            args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
            count += len(args[0]) if isinstance(args[0], list) else 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--warmup",
        type=float,
        default=2,
        help="seconds of the same load before each measured run, not counted (0: none)",
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="the receiver's ARCHIVER_LOG_LEVEL (INFO: one JSON line per webhook)",
    )
    parser.add_argument(
        "--without-totals-triggers",
        action="store_true",
        help="drop the media_totals triggers first (to measure what they cost)",
    )
    parser.add_argument(
        "--without-chats-triggers",
        action="store_true",
        help="drop the media_chats triggers first (to measure what they cost)",
    )
    parser.add_argument(
        "--without-filter-indexes",
        action="store_true",
        help="PostgreSQL: drop the media lookup indexes in FILTER_INDEXES first, to measure "
        "what keeping them up costs each insert",
    )
    parser.add_argument(
        "--server",
        choices=["uvicorn", "granian"],
        default="uvicorn",
        help="uvicorn: the Procfile's web line; granian: the alternative line in "
        "docs/performance.md (pip install granian), both sides of the ratio under it",
    )
    parser.add_argument(
        "--caption-lines",
        type=int,
        default=0,
        metavar="CHARS",
        help="captions of lines this long, as people type them (0: one printable line)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the receiver with py-spy (pip install py-spy) during the load and write "
        "its folded stacks here; a summary by function is printed",
    )
    args = parser.parse_args()
    master = secrets.token_urlsafe(24)
    hmac_key = "bench-hmac-key"
    count = 400_000
    tmp = Path(tempfile.mkdtemp())
    with (
        services.postgres_server() as admin_url,
        services.redis_server() as redis_url,
        migrated_database(args.database, tmp, admin_url) as db_url,
    ):
        engine = make_engine(db_url)
        triggers = [
            summary
            for summary, drop in (
                ("media_totals", args.without_totals_triggers),
                ("media_chats", args.without_chats_triggers),
            )
            if drop
        ]
        dropped = [f"{summary} triggers" for summary in triggers]
        with engine.begin() as conn:
            for summary in triggers:
                for operation in ("insert", "update", "delete"):
                    suffix = " ON media" if engine.dialect.name == "postgresql" else ""
                    conn.execute(text(f"DROP TRIGGER {summary}_{operation}{suffix}"))
            if args.without_filter_indexes:
                if engine.dialect.name != "postgresql":
                    parser.error("--without-filter-indexes is for PostgreSQL")
                for index in FILTER_INDEXES:
                    conn.execute(text(f"DROP INDEX {index}"))
                dropped.append("filter indexes")
        add_tenant(engine, master=master, hmac_key=hmac_key)
        env = {
            "ARCHIVER_DATABASE_URL": db_url,
            "ARCHIVER_BROKER_URL": redis_url,
            "ARCHIVER_SECRET_KEY": master,
            "ARCHIVER_LOG_LEVEL": args.log_level,
        }
        results: dict[str, Load] = {}
        cpu: dict[str, float] = {}
        kernel: dict[str, float] = {}  # of cpu, in the kernel (system calls: sockets, mostly)
        database_cpu = 0.0  # PostgreSQL's, while the receiver was measured
        warmed: dict[str, int] = {}  # 2xx answers during the warm-up, not measured
        for name, target in (
            ("bare starlette", "bench.bare_app:create_app"),
            ("titan-archiver", None),
        ):
            proc, url = serve(f"bench-{name.split()[0]}", target, env, args.server)

            def drive(run: str, seconds: float, url: str = url) -> Load:
                return run_load(
                    f"{url}/webhooks/acme",
                    hmac_key=hmac_key,
                    run=run,
                    count=count,
                    connections=args.connections,
                    seconds=seconds,
                    caption_lines=args.caption_lines,
                )

            sampler = None
            try:
                if args.warmup > 0:
                    # Connections opened, first-use imports done, caches filled: measured is
                    # a server as it runs in production, not its first seconds.
                    warm = drive(name[0].lower(), args.warmup)
                    warmed[name] = warm.requests - warm.non_2xx - warm.errors
                if args.profile is not None and target is None:
                    sampler = start_sampling(proc.proc.pid, args.profile, args.seconds)
                is_receiver = target is None
                before = cpu_seconds(proc.proc.pid)
                database_before = server_cpu_seconds("postgres") if is_receiver else 0.0
                results[name] = drive(name[0].upper(), args.seconds)
                after = cpu_seconds(proc.proc.pid)
                if is_receiver:
                    database_cpu = server_cpu_seconds("postgres") - database_before
                cpu[name] = after[0] + after[1] - before[0] - before[1]
                kernel[name] = after[1] - before[1]
                if sampler is not None:
                    sampler.wait(60)
            finally:
                proc.stop()
        with session_scope(engine) as session:
            rows = session.exec(select(func.count()).select_from(Media)).one()
        queued = queued_rows(redis.Redis.from_url(redis_url))
        engine.dispose()
    bare, ours = results["bare starlette"], results["titan-archiver"]
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, python {sys.version.split()[0]}"
    )
    print(
        f"load: {bare.tool}, {args.connections} connections, {args.seconds:.0f}s after "
        f"{args.warmup:.0f}s of warm-up; "
        f"one {args.server} process each; database {args.database}; "
        f"receiver log level {args.log_level}"
        + "".join(f"; {what} dropped" for what in dropped)
        + (f"; captions in lines of {args.caption_lines}" if args.caption_lines else "")
    )
    line = (
        processes.GRANIAN_WEB
        if args.server == "granian"
        else f"(Procfile web) {processes.procfile_command('web')}"
    )
    print(f"server command line: {line}")
    print(
        f"{'server':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}"
        f"{'CPU us/req':>12}{'of it kernel':>14}"
    )
    for name, load in results.items():
        answered = load.requests - load.errors
        per_request = cpu[name] / answered * 1e6 if answered else float("nan")
        print(
            f"{name:<16}{load.rps:>10.0f}{load.p50_ms:>9.2f}{load.p99_ms:>9.2f}"
            f"{load.non_2xx:>9}{load.errors:>8}{per_request:>12.0f}"
            f"{kernel[name] / cpu[name] if cpu[name] else 0:>14.0%}"
        )
    accepted = ours.requests - ours.non_2xx - ours.errors
    print(
        f"ratio: {ours.rps / bare.rps:.2f} of bare (target >= 0.25); p99 {ours.p99_ms:.1f} ms "
        f"(target < 25); receiver CPU {cpu['titan-archiver'] / max(accepted, 1) * 1e6:.0f} us "
        f"per accepted webhook (target <= 150)"
    )
    if args.database == "postgres":
        # The database shares this machine's cores with the receiver and wrk: what it
        # spends per webhook is CPU the receiver cannot have.
        print(
            f"database: PostgreSQL's processes {database_cpu / max(accepted, 1) * 1e6:.0f} us "
            f"of CPU per accepted webhook ({database_cpu / args.seconds:.2f} cores)"
        )
    accepted_all = accepted + warmed.get("titan-archiver", 0)
    print(
        f"durability: {accepted_all} accepted (with the warm-up's), {rows} rows, "
        f"{queued} rows in broker messages"
    )
    if args.profile is not None:
        summarize(args.profile)


if __name__ == "__main__":
    main()
