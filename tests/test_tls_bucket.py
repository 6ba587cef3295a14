"""A tenant whose S3 endpoint serves HTTPS with a certificate from its own private CA: moto,
and Ceph's RADOS Gateway (beast's ssl_endpoint), over TLS with a certificate this test
signs. Without the tenant's CA bundle the check refuses the endpoint; with it
(`tenants add --s3-ca-bundle`) the check passes and media is archived over HTTPS. Real
processes: simulator, receiver, a Celery worker; SQLite."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack import ceph, processes
from devstack.fixtures import process_env, running_archiver
from devstack.rig import RedisDatabases
from tests.conftest import migrated_database
from tests.test_cli import run
from titan_simulator.sender import post_signed


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1, server key), PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archiver test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextmanager
def _https_moto(cert: Path, key: Path) -> Iterator[str]:
    port = processes.free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    moto = processes.start_process("moto-tls", [*argv, "-c", str(cert), "-k", str(key)])
    try:
        processes.wait_until(lambda: processes.port_open("127.0.0.1", port), timeout=30)
        yield f"https://127.0.0.1:{port}"
    finally:
        moto.stop()


@pytest.mark.parametrize("server", ["moto", pytest.param("rgw", marks=pytest.mark.rgw)])
def test_a_tenant_bucket_behind_a_private_ca_is_checked_and_archived_over_https(
    tmp_path: Path, redis_dbs: RedisDatabases, server: str
) -> None:
    ca, cert, key = _certificates(tmp_path)
    if server == "rgw":
        if lacking := ceph.missing():
            pytest.skip(f"no Ceph RADOS Gateway here: {', '.join(lacking)} not installed")
        https: AbstractContextManager[str] = ceph.rgw_server(tls=(cert, key))
    else:
        https = _https_moto(cert, key)
    with https as endpoint:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            verify=str(ca),
            config=Config(s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket="tls-bucket")
        broker = redis_dbs.take()
        with migrated_database("sqlite", tmp_path, None) as database_url:
            env = process_env(database_url, broker)
            with running_archiver("tls", env, tmp_path) as (web, sim):
                sim.add_account(api_key="titan_tls_" + "k" * 12, account="tls")
                (tmp_path / "hmac").write_text("tls-webhook-key-123\n")
                base = [
                    "tenants", "add", "tls",
                    "--hmac-key-file", str(tmp_path / "hmac"),
                    "--titan-url", sim.base_url,
                    "--titan-api-key", "titan_tls_" + "k" * 12,
                    "--s3-bucket", "tls-bucket",
                    "--s3-endpoint", endpoint,
                    "--s3-region", "us-east-1",
                    "--s3-access-key-id", "testing",
                    "--s3-secret-access-key", "testing",
                ]  # fmt: skip
                refused = run(database_url, *base, check=False, env=env)
                assert refused.returncode == 1, refused.stderr
                assert "FAIL" in refused.stderr and "bucket" in refused.stderr
                added = run(database_url, *base, "--s3-ca-bundle", str(ca), env=env)
                assert json.loads(added.stdout)["s3CaBundle"] == 1
                item = sim.make_media(account="tls", message_type="image", size=30_000)
                with httpx.Client(timeout=30) as client:
                    answer = post_signed(
                        client,
                        f"{web.receiver_url}/webhooks/tls",
                        "tls-webhook-key-123",
                        item.envelope,
                    )
                assert answer.status_code == 202

                def archived() -> dict[str, object] | None:
                    listed = run(
                        database_url, "media", "list", "--tenant", "tls", "--format", "jsonl",
                        env=env,
                    ).stdout.splitlines()  # fmt: skip
                    doc = json.loads(listed[0]) if listed else None
                    return doc if doc and doc["status"] == "archived" else None

                processes.wait_until(lambda: archived() is not None, timeout=60, interval=0.5)
                row = archived()
                assert row is not None
                stored = s3.head_object(Bucket="tls-bucket", Key=str(row["key"]))
                assert stored["ContentLength"] == item.size
