"""A new operator's mistakes get one clear line, a non-zero exit, and nothing written: no
silent fallback to ./archiver.db or a local Redis, no traceback (issue 24). Each command
runs as a user runs it: a real subprocess in a folder of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import httpx
import pytest
import yaml

from archiver.cli.main import main as cli_main
from archiver.errors import ConfigError
from archiver.settings import load_settings, unknown_names
from devstack.fixtures import MASTER_KEY, settings_for
from devstack.processes import free_port
from tests.test_receiver import serve

ROOT = Path(__file__).resolve().parent.parent
DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``argv`` in ``cwd`` with only ``env`` (and PATH/HOME) set: no ARCHIVER_* leaks in."""
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd)}
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "archiver.cli", *args], cwd, env)


def one_clean_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def nothing_written(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [], "a fallback wrote files"


BIN = Path(sys.executable).parent
PROCESSES = {
    "web": [str(BIN / "uvicorn"), "receiver.app:create_app", "--factory", "--port", "0"],
    "worker": [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--pool", "solo"],
    "beat": [str(BIN / "celery"), "-A", "worker.celery_app", "beat"],
    "render": [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "-Q", "render"],
}
# What each says it is: the render pool is a Celery worker like the archive pool.
SAYS = {"web": "web", "worker": "worker", "beat": "beat", "render": "worker"}


@pytest.mark.parametrize("role", sorted(PROCESSES))
@pytest.mark.parametrize("missing", ["ARCHIVER_DATABASE_URL", "ARCHIVER_BROKER_URL"])
def test_a_production_process_without_a_url_stops_and_names_it(
    role: str, missing: str, tmp_path: Path
) -> None:
    env = {
        "ARCHIVER_SECRET_KEY": MASTER_KEY,
        "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path}/elsewhere.db",
        "ARCHIVER_BROKER_URL": DEAD_BROKER,
        "PYTHONPATH": str(ROOT),
    }
    del env[missing]
    work = tmp_path / "cwd"
    work.mkdir()
    result = run(PROCESSES[role], work, env, timeout=60)
    assert result.returncode == 1, result.stderr
    one_clean_line(result, f"titan-archiver {SAYS[role]}:", missing)
    assert "not set" in result.stderr
    nothing_written(work)


def test_db_upgrade_without_a_database_url_creates_nothing(tmp_path: Path) -> None:
    result = cli(tmp_path, {"ARCHIVER_SECRET_KEY": MASTER_KEY}, "db", "upgrade")
    assert result.returncode == 1
    one_clean_line(result, "ARCHIVER_DATABASE_URL is not set")
    nothing_written(tmp_path)


def test_development_keeps_the_embedded_defaults() -> None:
    settings = load_settings(env="development")
    assert settings.database_url == "sqlite:///archiver.db"
    assert settings.broker_url.startswith("redis://127.0.0.1")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://root@127.0.0.1/test", "names 'mysql'"),
        ("not a url", "is not a database URL"),
        ("postgresql://archiver:<password>@postgres:5432/archiver", "placeholder"),
    ],
)
def test_a_database_url_we_cannot_drive_is_refused(url: str, says: str, tmp_path: Path) -> None:
    env = {"ARCHIVER_SECRET_KEY": MASTER_KEY, "ARCHIVER_DATABASE_URL": url}
    result = cli(tmp_path, env, "tenants", "list")
    assert result.returncode == 1
    one_clean_line(result, "ARCHIVER_DATABASE_URL", says)
    nothing_written(tmp_path)


def test_unknown_settings_are_reported_with_the_nearest_name(tmp_path: Path) -> None:
    environ = {"ARCHIVER_DATABSE_URL": "x", "ARCHIVER_FROBNICATE": "1", "ARCHIVER_LOG_LEVEL": "x"}
    assert unknown_names(environ) == [
        "ARCHIVER_DATABSE_URL (did you mean ARCHIVER_DATABASE_URL?)",
        "ARCHIVER_FROBNICATE",
    ]
    env = {
        "ARCHIVER_SECRET_KEY": MASTER_KEY,
        "ARCHIVER_DATABSE_URL": f"sqlite:///{tmp_path}/a.db",
    }
    result = cli(tmp_path, env, "tenants", "list")
    assert result.returncode == 1
    assert "unknown settings ignored: ARCHIVER_DATABSE_URL (did you mean" in result.stderr
    one_clean_line(result, "ARCHIVER_DATABASE_URL is not set")


def test_the_kubernetes_secret_template_never_becomes_working_settings() -> None:
    template = yaml.safe_load((ROOT / "deploy/kubernetes/secret.example.yaml").read_text())
    values = dict(template["stringData"])
    for name in ("ARCHIVER_SECRET_KEY", "ARCHIVER_ADMIN_API_KEY", "ARCHIVER_DATABASE_URL"):
        good = {
            "secret_key": MASTER_KEY,
            "database_url": "sqlite:///x.db",
            "admin_api_key": "a" * 32,
        }
        field = name.removeprefix("ARCHIVER_").lower()
        with pytest.raises(ConfigError, match=name):
            load_settings(**{**good, field: values[name]})


@pytest.fixture
def migrated(tmp_path: Path) -> dict[str, str]:
    env = {
        "ARCHIVER_SECRET_KEY": MASTER_KEY,
        "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path}/archive.db",
        "ARCHIVER_BROKER_URL": DEAD_BROKER,
    }
    assert cli(tmp_path, env, "db", "upgrade").returncode == 0
    return env


def test_upgrade_to_an_unknown_revision_names_the_known_ones(
    migrated: dict[str, str], tmp_path: Path
) -> None:
    result = cli(tmp_path, migrated, "db", "upgrade", "--revision", "9999")
    assert result.returncode == 1
    one_clean_line(result, "unknown revision '9999'", "0001 to")


def test_database_trouble_says_which(migrated: dict[str, str], tmp_path: Path) -> None:
    never_made = {**migrated, "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path}/typo.db"}
    result = cli(tmp_path, never_made, "media", "list")
    assert result.returncode == 1
    one_clean_line(result, "database not migrated", "typo.db")
    assert not (tmp_path / "typo.db").exists()

    (tmp_path / "empty.db").touch()
    empty = {**migrated, "ARCHIVER_DATABASE_URL": f"sqlite:///{tmp_path}/empty.db"}
    result = cli(tmp_path, empty, "media", "list")
    assert result.returncode == 1
    one_clean_line(result, "database not migrated", "no such table")

    refused = {**migrated, "ARCHIVER_DATABASE_URL": f"postgresql://127.0.0.1:{free_port()}/x"}
    result = cli(tmp_path, refused, "media", "list")
    assert result.returncode == 1
    one_clean_line(result, "database unavailable", "refused")


def test_export_to_a_missing_folder_names_the_flag(
    migrated: dict[str, str], tmp_path: Path
) -> None:
    result = cli(tmp_path, migrated, "media", "export", "-o", str(tmp_path / "nope" / "x.jsonl"))
    assert result.returncode == 2
    one_clean_line(result, "--output", "does not exist")


@pytest.mark.parametrize(
    "args",
    [
        ("media", "erase", "--tenant", "acme", "--id", "ghost", "--yes"),
        ("media", "retry", "--id", "ghost"),
        ("media", "show", "ghost"),
    ],
)
def test_an_id_that_names_no_media_fails(
    args: tuple[str, ...], migrated: dict[str, str], tmp_path: Path
) -> None:
    add = cli(
        tmp_path,
        migrated,
        *("tenants", "add", "acme", "--hmac-key", "h" * 24, "--titan-url", "https://t.example"),
        *("--titan-api-key", "titan_" + "k" * 24, "--s3-bucket", "b", "--no-check"),
        *("--s3-access-key-id", "AKIA", "--s3-secret-access-key", "s" * 20),
    )
    assert add.returncode == 0, add.stderr
    result = cli(tmp_path, migrated, *args)
    assert result.returncode == 1
    one_clean_line(result, "ghost")


def test_since_takes_a_date_and_a_bad_one_names_the_flag(
    migrated: dict[str, str], tmp_path: Path
) -> None:
    assert cli(tmp_path, migrated, "media", "list", "--since", "2026-12-01").returncode == 0
    result = cli(tmp_path, migrated, "media", "list", "--since", "yesterday")
    assert result.returncode == 2
    one_clean_line(result, "--since", "2025-01-15")
    assert "Invalid value for --since: must be" in result.stderr  # the flag, not the field


@pytest.mark.parametrize("args", [("media", "requeue"), ("media", "render")])
def test_a_command_without_its_flag_is_a_usage_error(
    args: tuple[str, ...], migrated: dict[str, str], tmp_path: Path
) -> None:
    result = cli(tmp_path, migrated, *args)
    assert result.returncode == 2
    one_clean_line(result, "--stuck" if "requeue" in args else "--missing")


def test_the_broker_down_is_said_not_thrown(migrated: dict[str, str], tmp_path: Path) -> None:
    status = cli(tmp_path, migrated, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    assert '"queueDepth": null' in status.stdout
    assert '"broker": "unreachable' in status.stdout
    one_clean_line(status)
    requeue = cli(tmp_path, migrated, "media", "requeue", "--stuck")
    assert requeue.returncode == 1
    one_clean_line(requeue, "broker unreachable")


def test_metrics_and_readiness_say_the_broker_is_unreachable(tmp_path: Path) -> None:
    from devstack.fixtures import upgrade

    url = f"sqlite:///{tmp_path}/a.db"
    upgrade(url)
    with serve(settings_for(url, DEAD_BROKER, retry_after_seconds=17)) as base:
        scraped = httpx.get(f"{base}/metrics", timeout=30)
        assert scraped.status_code == 200
        assert "archiver_broker_up 0.0" in scraped.text
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "17"
        assert ready.json()["checks"] == {"database": "ok", "broker": "down"}
        assert ready.json()["reasons"]["broker"].startswith("unreachable: ")


def test_readiness_says_an_unmigrated_database_is_not_migrated(tmp_path: Path) -> None:
    with serve(settings_for(f"sqlite:///{tmp_path}/fresh.db", DEAD_BROKER)) as base:
        ready = httpx.get(f"{base}/readyz", timeout=30).json()
        assert ready["checks"]["database"] == "down"
        assert ready["reasons"]["database"].startswith("not migrated")


def test_dev_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli(tmp_path, {}, "dev", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 1
    one_clean_line(result, f"port {port} is already in use")
    nothing_written(tmp_path)


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def test_every_command_answers_dash_h(tmp_path: Path) -> None:
    from click.testing import CliRunner

    runner = CliRunner()
    for path in _commands(cli_main):
        result = runner.invoke(cli_main, [*path, "-h"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
