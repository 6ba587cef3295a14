"""Signed checkpoints: the head of each tenant's ledger chain, signed with the deployment's
Ed25519 key and written to the tenant's own bucket, so the chain's state is also kept
outside the database. Rewriting the database's chain wholesale (every hash recomputed)
then no longer matches a checkpoint the bucket holds, and the signature cannot be forged
without the key (kept encrypted under the master key, like tenant secrets).

Object: ``{prefix}.titan-archiver/checkpoints/{seq:012d}.json`` =
``{"tenant", "seq", "hash", "at", "publicKey", "signature"}``; the signature covers the
canonical JSON of the other fields. ``titan-archiver audit public-key`` prints the key an
auditor checks them with.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from archiver.governance import ledger, worm
from archiver.infra.db import session_scope
from archiver.object_keys import normalise_prefix
from archiver.secrets_box import SecretBox
from archiver.tables import LedgerEntry, SigningKey, Tenant, utcnow

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

FOLDER = ".titan-archiver/checkpoints/"
log = logging.getLogger(__name__)


def signing_key(session: Session, box: SecretBox) -> Ed25519PrivateKey:
    """The deployment's signing key, made (and stored encrypted) on first use."""
    found = session.exec(select(SigningKey).order_by(col(SigningKey.id))).first()
    if found is not None:
        raw = base64.b64decode(box.decrypt(found.private_enc))
        return Ed25519PrivateKey.from_private_bytes(raw)
    key = Ed25519PrivateKey.generate()
    raw_private = key.private_bytes_raw()
    session.add(
        SigningKey(
            private_enc=box.encrypt(base64.b64encode(raw_private).decode()),
            public_key=public_text(key.public_key()),
            created_at=utcnow(),
        )
    )
    session.flush()
    return key


def public_text(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes_raw()).decode()


def public_pem(session: Session, box: SecretBox) -> str:
    key = signing_key(session, box).public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def make(key: Ed25519PrivateKey, *, tenant: str, seq: int, digest: str, at: datetime) -> bytes:
    """A signed checkpoint of ``tenant``'s chain head."""
    body: dict[str, Any] = {
        "tenant": tenant,
        "seq": seq,
        "hash": digest,
        "at": at.isoformat(),
        "publicKey": public_text(key.public_key()),
    }
    body["signature"] = base64.b64encode(key.sign(ledger.canonical(body).encode())).decode()
    return json.dumps(body, indent=2).encode()


def object_key(tenant: Tenant, seq: int) -> str:
    return f"{normalise_prefix(tenant.s3_prefix)}{FOLDER}{seq:012d}.json"


def write(s3: S3Client, tenant: Tenant, document: bytes, seq: int, now: datetime) -> None:
    """Put the checkpoint in the tenant's bucket (retained like its media, if it locks)."""
    s3.put_object(
        Bucket=tenant.s3_bucket,
        Key=object_key(tenant, seq),
        Body=document,
        ContentType="application/json",
        ChecksumSHA256=base64.b64encode(hashlib.sha256(document).digest()).decode(),
        **worm.lock_fields(tenant, now),
    )


def latest(s3: S3Client, tenant: Tenant) -> dict[str, Any] | None:
    """The newest checkpoint in the tenant's bucket (None: none yet)."""
    prefix = f"{normalise_prefix(tenant.s3_prefix)}{FOLDER}"
    newest: str | None = None
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=tenant.s3_bucket, Prefix=prefix
    ):
        for entry in page.get("Contents", []):
            if newest is None or entry["Key"] > newest:
                newest = entry["Key"]
    if newest is None:
        return None
    found: dict[str, Any] = json.loads(
        s3.get_object(Bucket=tenant.s3_bucket, Key=newest)["Body"].read()
    )
    return found


def problem(
    session: Session, tenant: Tenant, checkpoint: dict[str, Any], public: str
) -> str | None:
    """Why the checkpoint does not vouch for the database's chain (None: it does)."""
    signed = {k: v for k, v in checkpoint.items() if k != "signature"}
    if checkpoint.get("publicKey") != public:
        return "the bucket's newest checkpoint is signed by another key"
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(
            base64.b64decode(str(checkpoint.get("signature", ""))),
            ledger.canonical(signed).encode(),
        )
    except (InvalidSignature, ValueError):
        return "the bucket's newest checkpoint has a bad signature"
    seq = int(checkpoint.get("seq", 0))
    entry = session.exec(
        select(LedgerEntry).where(
            col(LedgerEntry.tenant_id) == tenant.saved_id, col(LedgerEntry.seq) == seq
        )
    ).first()
    if entry is None:
        return f"record #{seq}: in the bucket's signed checkpoint, not in the database"
    if entry.hash != checkpoint.get("hash"):
        return (
            f"record #{seq}: differs from the bucket's signed checkpoint (the chain was rewritten)"
        )
    return None


def bucket_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "refused")
    if isinstance(exc, BotoCoreError):
        return type(exc).__name__
    return str(exc)


def publish(
    engine: Engine,
    box: SecretBox,
    s3_for: Callable[[Tenant], S3Client],
    grown: dict[int, tuple[int, str]],
) -> int:
    """Write a signed checkpoint of each tenant chain that grew; how many were written. A
    bucket that refuses is logged and tried again at the next growth (never fatal)."""
    written = 0
    now = utcnow()
    with session_scope(engine) as session:
        key = signing_key(session, box)
        tenants = {t.saved_id: t for t in session.exec(select(Tenant))}
    for tenant_id, (seq, digest) in grown.items():
        tenant = tenants.get(tenant_id)
        if tenant is None:
            continue
        document = make(key, tenant=tenant.name, seq=seq, digest=digest, at=now)
        try:
            write(s3_for(tenant), tenant, document, seq, now)
            written += 1
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "ledger checkpoint not written: %s",
                bucket_error(exc),
                extra={"tenant": tenant.name},
            )
    return written
