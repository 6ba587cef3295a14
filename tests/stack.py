"""Test harness pieces every stack test needs: a tenant wired to the simulator and a bucket,
and Prometheus text parsed into sums."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from archiver.db import make_engine, session_scope
from archiver.secrets_box import SecretBox
from tests import services
from tests.conftest import MASTER_KEY
from titan_simulator.sender import Simulator


@dataclass(frozen=True)
class TenantSetup:
    name: str
    hmac_key: str
    titan_api_key: str
    bucket: str


def add_tenant(
    database_url: str,
    *,
    sim: Simulator,
    s3_endpoint: str,
    name: str,
    strategy: str = "download",
    master_key: str = MASTER_KEY,
) -> TenantSetup:
    """Register ``name`` with the simulator (its own Titan key) and the archive (its own bucket)."""
    from archiver.tenants import TenantSpec, create_tenant

    setup = TenantSetup(
        name=name,
        hmac_key=f"{name}-hmac-" + secrets.token_hex(8),
        titan_api_key=f"titan_{name}_" + secrets.token_hex(6),
        bucket=f"{name}-" + secrets.token_hex(4),
    )
    services.s3_client(s3_endpoint).create_bucket(Bucket=setup.bucket)
    sim.add_account(api_key=setup.titan_api_key, account=name)
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            create_tenant(
                session,
                box=SecretBox(master_key),
                spec=TenantSpec(
                    name=name,
                    hmac_key=setup.hmac_key,
                    titan_url=sim.base_url,
                    titan_api_key=setup.titan_api_key,
                    strategy=strategy,
                    s3_bucket=setup.bucket,
                    s3_endpoint=s3_endpoint,
                    s3_region="us-east-1",
                    s3_access_key_id="testing",
                    s3_secret_access_key="testing",
                ),
            )
    finally:
        engine.dispose()
    return setup


def scrape(
    url: str, token: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics page as {(sample name, sorted labels): value}."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(url, headers=headers, timeout=10)
    answer.raise_for_status()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@dataclass
class Web:
    """The Titan simulator and a receiver, running as processes; stop() ends both."""

    sim_url: str
    receiver_url: str
    procs: list[services.Process]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def start_web(name: str, env: dict[str, str]) -> Web:
    """Start ``{name}-sim`` and ``{name}-receiver`` (with ``env``) and wait until both answer."""
    sim_port, receiver_port = services.free_port(), services.free_port()
    web = Web(f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{receiver_port}", [])
    web.procs.append(
        services.start_process(
            f"{name}-sim", services.uvicorn_argv("titan_simulator.app:create_app", sim_port)
        )
    )
    web.procs.append(
        services.start_process(
            f"{name}-receiver", services.uvicorn_argv("receiver.app:create_app", receiver_port), env
        )
    )
    try:
        services.wait_until(lambda: services.http_up(web.sim_url + "/_sim/stats"), timeout=30)
        services.wait_until(lambda: services.http_up(web.receiver_url + "/readyz"), timeout=30)
    except BaseException:
        web.stop()
        raise
    return web
