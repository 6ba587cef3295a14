"""Deployment files name only settings, modules and commands that exist."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from archiver.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {f"ARCHIVER_{name.upper()}" for name in Settings.model_fields}


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        entries[name.strip()] = command.strip()
    return entries


def test_procfile_has_the_processes_the_product_needs() -> None:
    assert {"release", "web", "worker", "beat"} <= set(procfile())


def test_procfile_web_serves_the_receiver_factory_on_port() -> None:
    web = shlex.split(procfile()["web"])
    assert web[:2] == ["uvicorn", "receiver.app:create_app"] and "--factory" in web
    assert "${PORT:-8000}" in procfile()["web"]
    module, attr = web[1].split(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_procfile_worker_points_at_the_celery_app_module() -> None:
    for name in ("worker", "beat"):
        argv = [a for a in shlex.split(procfile()[name]) if a != "env" and "=" not in a]
        assert argv[:3] == ["celery", "-A", "worker.celery_app"]
    # SIGTERM must start Celery's time-bounded soft shutdown, not an unbounded warm one.
    assert "REMAP_SIGTERM=SIGQUIT" in procfile()["worker"]
    assert (ROOT / "worker" / "celery_app.py").exists()


@pytest.mark.parametrize("doc", ["docs/settings.md", "deploy/env.example"])
def test_every_setting_is_documented(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert {s for s in SETTINGS if s not in text} == set()
    named = set(re.findall(r"ARCHIVER_[A-Z0-9_]+", text))
    assert named - SETTINGS == set(), "documents a setting the code does not have"


def test_compose_and_dockerfile_use_real_settings_only() -> None:
    for path in (ROOT / "deploy").iterdir():
        named = set(re.findall(r"ARCHIVER_[A-Z0-9_]+", path.read_text()))
        assert named <= SETTINGS, path
