"""A real S3 server for the tests and benchmarks: Ceph's RADOS Gateway on a throw-away
one-node cluster on 127.0.0.1, from Debian's packages (ceph-mon, ceph-osd, radosgw,
ceph-common).

One monitor, one OSD on ``memstore`` (RAM, capped by ``memstore device bytes``), radosgw with
the beast frontend, cephx off; everything lives in a temporary folder and goes with it. Two
settings make it practical: with authentication off the clients must be told
``ms mon client mode = crc`` (else radosgw hangs at start), and
``paxos propose interval = 0.1`` brings the cluster up in about two seconds; the OSD is
put in the CRUSH map beforehand (see ``rgw_server``).

What differs from AWS and moto and matters to us (tests/test_rgw.py pins each):
CompleteMultipartUpload answers an empty ETag (the object's ETag is read with a HEAD), bucket
names need at least three characters.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from devstack import processes
from devstack.processes import Process, free_port, port_open, wait_until

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
ACCESS_KEY = "testing"  # the same credentials the moto endpoint accepts (services.S3_CREDENTIALS)
SECRET_KEY = "testing"


class CephMissing(RuntimeError):
    """Debian's ceph packages are not installed here."""


def missing() -> list[str]:
    """The binaries this machine lacks (empty when a gateway can be started)."""
    return [name for name in BINARIES if shutil.which(name) is None]


def _config(
    work: Path,
    fsid: str,
    mon_port: int,
    rgw_port: int,
    memstore_bytes: int,
    tls: tuple[Path, Path] | None,
) -> str:
    frontend = f"beast endpoint=127.0.0.1:{rgw_port}"
    if tls is not None:
        frontend = (
            f"beast ssl_endpoint=127.0.0.1:{rgw_port} "
            f"ssl_certificate={tls[0]} ssl_private_key={tls[1]}"
        )
    return f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms bind ipv6 = false
paxos propose interval = 0.1
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd crush chooseleaf type = 0
run dir = {work}/run
admin socket = {work}/run/$name.asok
log file = {work}/log/$name.log
pid file = {work}/run/$name.pid
keyring = /dev/null
[mon.a]
mon data = {work}/mon
public addr = 127.0.0.1:{mon_port}
[osd.0]
osd data = {work}/osd
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd crush update on start = false
osd class update on start = false
[client.rgw]
rgw frontends = {frontend}
rgw data = {work}/rgw
rgw enable usage log = false
"""


def _run(argv: list[str], conf: Path, *, attempts: int = 5) -> str:
    """Run a Ceph command-line tool; a failed ``ceph`` command is tried again: just after a
    monitor starts, a client may ask before it knows the cluster's fsid and be refused
    (EPERM), and every command used here can be repeated safely."""
    for attempt in range(1, attempts + 1):
        done = subprocess.run(
            [argv[0], "-c", str(conf), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return done.stdout
        if argv[0] != "ceph" or attempt == attempts:
            break
        time.sleep(0.2 * attempt)
    raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")


@contextmanager
def rgw_server(
    *,
    memstore_bytes: int = 2 << 30,
    tls: tuple[Path, Path] | None = None,
    log_dir: Path | None = None,
) -> Iterator[str]:
    """Start a one-node Ceph cluster and its RADOS Gateway; yield the S3 endpoint URL (user
    ``testing``/``testing``). ``tls``: (certificate, key) PEM files: the gateway serves
    HTTPS only. Everything is stopped and removed afterwards."""
    if lacking := missing():
        raise CephMissing(
            f"{', '.join(lacking)} not installed (Debian: ceph-mon ceph-osd radosgw ceph-common)"
        )
    work = Path(tempfile.mkdtemp(prefix="archiver-ceph-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        for folder in ("mon", "osd", "rgw", "run", "log"):
            (work / folder).mkdir()
        fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        mon_port, rgw_port = free_port(), free_port()
        conf = work / "ceph.conf"
        conf.write_text(_config(work, fsid, mon_port, rgw_port, memstore_bytes, tls))
        monmap = work / "monmap"
        subprocess.run(
            [
                *("monmaptool", "--create", "--add", "a", f"v1:127.0.0.1:{mon_port}"),
                *("--fsid", fsid, str(monmap)),
            ],
            check=True,
            capture_output=True,
        )
        _run(["ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap)], conf)

        def daemon(name: str, argv: list[str]) -> Process:
            process = processes.start_process(
                name, [argv[0], "-f", "-c", str(conf), *argv[1:]], log_dir=log_dir
            )
            stack.callback(process.stop)
            return process

        daemon("ceph-mon", ["ceph-mon", "-i", "a"])
        _run(["ceph", "--connect-timeout", "20", "osd", "create", osd_uuid], conf)
        # Placed here, not by the OSD at start: a starting OSD may send that command before
        # it knows the cluster's fsid, and is then refused ("wrong fsid") and exits.
        _run(["ceph", "osd", "crush", "add", "osd.0", "1", "root=default", "host=node"], conf)
        _run(["ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], conf)
        osd = daemon("ceph-osd", ["ceph-osd", "-i", "0"])

        def osd_up() -> bool:
            if not osd.alive():
                raise RuntimeError(f"ceph-osd exited: {osd.log()[-2000:]}")
            return "1 up" in _run(["ceph", "osd", "stat"], conf)

        wait_until(osd_up, timeout=60, interval=0.2, what="the OSD up")
        gateway = daemon("radosgw", ["radosgw", "-n", "client.rgw"])

        def listening() -> bool:
            if not gateway.alive():
                raise RuntimeError(f"radosgw exited: {gateway.log()[-2000:]}")
            return port_open("127.0.0.1", rgw_port)

        wait_until(listening, timeout=60, interval=0.1, what="radosgw listening")
        _run(
            [
                *("radosgw-admin", "user", "create", "--uid", ACCESS_KEY),
                *("--display-name", "tests", "--access-key", ACCESS_KEY, "--secret", SECRET_KEY),
            ],
            conf,
        )
        yield f"{'https' if tls else 'http'}://127.0.0.1:{rgw_port}"
