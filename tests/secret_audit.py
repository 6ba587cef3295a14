"""The suite-wide secret audit: every secret the tests put into play, looked for in every log
line and every HTTP answer the suite produced.

Secrets are collected where they enter the product (SecretBox.encrypt, API-key issue, the
settings' secret fields), so no test has to remember to register one. Logs are the process
logs of every service the suite started and the output pytest captured from each test;
answers are the bodies of every HTTP response the tests received through httpx.
conftest.py wires this in and fails the run if anything is found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

MIN_LENGTH = 12  # shorter values ("testing", moto's fake credentials) are not secrets here
MAX_ANSWER_CHARS = 1_000_000
SECRET_SETTINGS = ("secret_key", "admin_api_key", "metrics_token", "previous_secret_keys")


@dataclass
class Audit:
    secrets: set[str] = field(default_factory=set)
    answers: list[tuple[str, str]] = field(default_factory=list)  # (where, body)
    captured: list[tuple[str, str]] = field(default_factory=list)  # (test id, output)
    log_files: list[Path] = field(default_factory=list)
    _patches: list[tuple[Any, str, Any]] = field(default_factory=list)

    def add_secret(self, value: object) -> None:
        if isinstance(value, str) and len(value) >= MIN_LENGTH:
            self.secrets.add(value)

    def record_answer(self, where: str, body: str) -> None:
        self.answers.append((where, body[:MAX_ANSWER_CHARS]))

    def sources(self) -> Iterator[tuple[str, str]]:
        for path in self.log_files:
            if path.exists():
                yield str(path), path.read_text(errors="replace")
        yield from self.captured
        yield from self.answers

    def leaks(self) -> list[tuple[str, str]]:
        """(where, which secret, masked) for every secret found in any source."""
        return find_leaks(self.secrets, self.sources())

    def figures(self) -> dict[str, Any]:
        """What this process audited and found, in a form another process can add up (the
        secrets themselves stay here: only their digests travel, to count each once)."""
        return {
            "secret_digests": sorted(hashlib.sha256(s.encode()).hexdigest() for s in self.secrets),
            "secrets": len(self.secrets),
            "log_files": len(self.log_files),
            "captured": len(self.captured),
            "answers": len(self.answers),
            "leaks": [list(leak) for leak in self.leaks()],
            "processes": 1,
        }

    @property
    def installed(self) -> bool:
        return bool(self._patches)

    # -- collection hooks ---------------------------------------------------------------

    def install(self) -> None:
        import httpx

        from archiver import settings
        from archiver.secrets_box import SecretBox
        from archiver.tenants import api_keys, tenants
        from devstack import processes

        audit = self
        original_encrypt = SecretBox.encrypt

        def encrypt(box: SecretBox, plaintext: str) -> str:
            audit.add_secret(plaintext)
            return original_encrypt(box, plaintext)

        original_issue = api_keys.issue

        def issue(*args: Any, **kwargs: Any) -> Any:
            row, key = original_issue(*args, **kwargs)
            audit.add_secret(key)
            return row, key

        original_init = settings.Settings.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            for name in SECRET_SETTINGS:
                value = getattr(self, name)
                if value is not None:
                    for part in value.get_secret_value().split(","):
                        audit.add_secret(part.strip())

        original_start = processes.start_process

        def start_process(
            name: str,
            argv: Sequence[str],
            env: dict[str, str] | None = None,
            *,
            log_dir: Path | None = None,
            cwd: Path | None = None,
        ) -> processes.Process:
            for key, value in (env or {}).items():
                if key.removeprefix("ARCHIVER_").lower() in SECRET_SETTINGS:
                    for part in value.split(","):
                        audit.add_secret(part.strip())
            process = original_start(name, argv, env, log_dir=log_dir, cwd=cwd)
            audit.log_files.append(process.log_path)
            return process

        original_send = httpx.Client.send

        def send(client: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
            response = original_send(client, request, **kwargs)
            if not kwargs.get("stream") and _is_text(response):
                audit.record_answer(f"{request.method} {request.url}", response.text)
            return response

        self._patch(SecretBox, "encrypt", encrypt)
        self._patch(api_keys, "issue", issue)
        self._patch(tenants, "issue_key", lambda *a, **k: issue(*a, **k)[1])
        self._patch(settings.Settings, "__init__", init)
        self._patch(processes, "start_process", start_process)
        self._patch(httpx.Client, "send", send)

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)


def total(audits: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several processes' audits as one: a secret in play in two counts once."""
    audits = list(audits)
    digests = {d for audit in audits for d in audit["secret_digests"]}
    summed = {
        key: sum(audit[key] for audit in audits)
        for key in ("log_files", "captured", "answers", "processes")
    }
    leaks = [tuple(leak) for audit in audits for leak in audit["leaks"]]
    return {**summed, "secret_digests": sorted(digests), "secrets": len(digests), "leaks": leaks}


def _is_text(response: httpx.Response) -> bool:
    kind: str = response.headers.get("content-type", "")
    return kind.startswith(("application/json", "text/", "application/problem+json"))


def find_leaks(secrets: Iterable[str], sources: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    wanted = sorted(s for s in secrets if len(s) >= MIN_LENGTH)
    found = []
    for where, text in sources:
        for secret in wanted:
            if secret in text:
                found.append((where, secret[:4] + "…" + f"({len(secret)} chars)"))
    return found
