"""Deployment files name only settings, modules and commands that exist."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from archiver.settings import Settings
from devstack import processes, services

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    str(field.validation_alias or f"ARCHIVER_{name.upper()}")
    for name, field in Settings.model_fields.items()
}


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        entries[name.strip()] = command.strip()
    return entries


def test_procfile_has_the_processes_the_product_needs() -> None:
    assert {"release", "web", "worker", "render", "beat"} <= set(procfile())


def test_procfile_web_serves_the_receiver_factory_on_port() -> None:
    web = shlex.split(procfile()["web"])
    assert web[:2] == ["uvicorn", "receiver.app:create_app"] and "--factory" in web
    assert "${PORT:-8000}" in procfile()["web"]
    _check_command(web)


def _options(argv: list[str]) -> dict[str, str]:
    """A command line's ``--option [value]`` pairs (a flag's value: "")."""
    options: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            value = argv[i + 1] if i + 1 < len(argv) else ""
            options[arg] = "" if value.startswith("--") else value
    return options


def test_the_dev_stack_runs_the_receiver_with_the_web_lines_flags() -> None:
    """`titan-archiver dev` and the tests' receivers cannot read the Procfile (an installed
    package has none), so they carry its flags: held equal to the web line's here, apart
    from what ``uvicorn_argv`` sets for each of them (the factory, host, port, log level)."""
    web = _options(shlex.split(procfile()["web"]))
    own = _options(processes.uvicorn_argv("receiver.app:create_app", 8000))
    assert set(own) == {"--factory", "--host", "--port", "--log-level"}
    assert {k: v for k, v in web.items() if k not in own} == _options(list(services.WEB_FLAGS))


def test_the_image_runs_the_web_line_of_the_procfile() -> None:
    cmd = next(
        line
        for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
        if line.startswith("CMD ")
    )
    argv = json.loads(cmd.removeprefix("CMD "))
    assert argv[:2] == ["sh", "-c"]
    web = shlex.split(argv[2].replace("${PORT}", "${PORT:-8000}"))
    assert web == shlex.split(procfile()["web"])


def test_procfile_worker_points_at_the_celery_app_module() -> None:
    for name in ("worker", "render", "beat"):
        argv = [a for a in shlex.split(procfile()[name]) if a != "env" and "=" not in a]
        assert argv[:3] == ["celery", "-A", "worker.celery_app"]
    # SIGTERM must start Celery's time-bounded soft shutdown, not an unbounded warm one.
    assert "REMAP_SIGTERM=SIGQUIT" in procfile()["worker"]
    assert "REMAP_SIGTERM=SIGQUIT" in procfile()["render"]
    # The render pool consumes only its queue: rendering never takes an archive slot.
    assert "ARCHIVER_WORKER_QUEUES=render" in procfile()["render"]
    assert (ROOT / "worker" / "celery_app.py").exists()


@pytest.mark.parametrize("doc", ["docs/settings.md", "deploy/env.example"])
def test_every_setting_is_documented(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert {s for s in SETTINGS if s not in text} == set()
    named = set(re.findall(r"ARCHIVER_[A-Z0-9_]+", text))
    assert named - SETTINGS == set(), "documents a setting the code does not have"


def test_compose_and_dockerfile_use_real_settings_only() -> None:
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_dir():
            continue
        named = set(re.findall(r"ARCHIVER_[A-Z0-9_]+", path.read_text()))
        assert named <= SETTINGS, path


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _routes() -> set[str]:
    from devstack.fixtures import settings_for
    from receiver.app import create_app

    app = create_app(settings_for("sqlite://"))
    return {getattr(route, "path", "") for route in app.routes}


def _check_command(argv: list[str]) -> None:
    """Every process command names a real entry point of this project."""
    if argv[0].endswith("titan-archiver"):
        from click.testing import CliRunner

        from archiver.cli.main import main

        assert CliRunner().invoke(main, [*argv[1:], "--help"]).exit_code == 0, argv
    elif argv[0].endswith("uvicorn"):
        module, attr = argv[1].split(":")
        assert callable(getattr(importlib.import_module(module), attr)) and "--factory" in argv
        # The web line's HTTP protocol answers webhooks below ASGI while uvicorn's access
        # log is off (receiver/protocol.py): every web command runs both as the Procfile's.
        module, attr = argv[argv.index("--http") + 1].split(":")
        assert issubclass(getattr(importlib.import_module(module), attr), HttpToolsProtocol)
        assert "--no-access-log" in argv, argv
    elif argv[0].endswith("celery"):
        assert argv[1:3] == ["-A", "worker.celery_app"] and argv[3] in {"worker", "beat"}
    else:
        raise AssertionError(f"unknown command {argv}")


def test_kubernetes_manifests_parse_and_name_real_commands_probes_and_settings() -> None:
    docs = [
        d
        for p in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for d in _yaml_documents(p)
    ]
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Job",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
    } <= kinds
    routes = _routes()
    for doc in docs:
        if doc["kind"] in {"ConfigMap", "Secret"}:
            data = doc.get("data") or doc.get("stringData") or {}
            assert set(data) <= SETTINGS, set(data) - SETTINGS
        if doc["kind"] not in {"Deployment", "Job"}:
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            _check_command(container["command"])
            for probe in ("livenessProbe", "readinessProbe"):
                if "httpGet" in container.get(probe, {}):
                    assert container[probe]["httpGet"]["path"] in routes
            if container["command"][3:4] == ["worker"]:
                env = {e["name"]: e["value"] for e in container.get("env", [])}
                assert env.get("REMAP_SIGTERM") == "SIGQUIT"
                grace = Settings.model_fields["shutdown_grace_seconds"].default
                assert pod["terminationGracePeriodSeconds"] > grace


def test_compose_file_parses_and_runs_real_commands() -> None:
    (compose,) = _yaml_documents(ROOT / "deploy" / "compose.yaml")
    services = compose["services"]
    assert {"postgres", "redis", "minio", "web", "worker"} <= set(services)
    for name in ("release", "worker", "render", "beat"):
        _check_command(shlex.split(services[name]["command"]))
    assert "-Q render" in services["render"]["command"]
    # Only the web container runs the HTTP server the image's HEALTHCHECK asks.
    for name in ("release", "worker", "worker-large", "render", "beat"):
        assert services[name]["healthcheck"] == {"disable": True}, name
    for name in ("worker", "worker-large", "render"):
        worker = services[name]
        assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
        # Longer than the workers' shutdown grace (25 s), so transfers are not cut at 10 s.
        assert int(worker["stop_grace_period"].rstrip("s")) > 25
        assert worker["environment"].keys() >= {"ARCHIVER_DATABASE_URL", "ARCHIVER_BROKER_URL"}


ARCHIVER_SERVICES = ("release", "web", "worker", "worker-large", "render", "beat")


def test_compose_keeps_one_master_key_across_ups_and_runs(tmp_path: Path) -> None:
    """Every archiver container reads the key the master-key service generated into the
    `secrets` volume, which it writes only once: the second `up` (and every `run`) reads the
    same key, so stored tenant secrets stay readable. Runs the service's own command."""
    from archiver.settings import load_settings

    (compose,) = _yaml_documents(ROOT / "deploy" / "compose.yaml")
    services = compose["services"]
    for name in ARCHIVER_SERVICES:
        env = services[name]["environment"]
        assert env["ARCHIVER_SECRET_KEY_FILE"] == "/secrets/master.key", name
        assert "ARCHIVER_SECRET_KEY" not in env, name
        assert "secrets:/secrets:ro" in services[name]["volumes"], name
    assert services["release"]["depends_on"]["master-key"] == {
        "condition": "service_completed_successfully"
    }
    assert "secrets" in compose["volumes"]
    # The generator, run twice against the same folder (a volume that outlives `down`).
    (script,) = services["master-key"]["command"]
    script = script.replace("/secrets/", f"{tmp_path}/").replace("python ", f"{sys.executable} ")
    subprocess.run(["sh", "-c", script], check=True)
    first = (tmp_path / "master.key").read_text()
    subprocess.run(["sh", "-c", script], check=True)
    assert (tmp_path / "master.key").read_text() == first
    env = dict(services["web"]["environment"])
    env["ARCHIVER_SECRET_KEY_FILE"] = str(tmp_path / "master.key")
    settings = load_settings(
        database_url=env["ARCHIVER_DATABASE_URL"], secret_key_file=env["ARCHIVER_SECRET_KEY_FILE"]
    )
    assert settings.master_key() == first.strip() and len(first.strip()) >= 32


def test_every_worker_start_takes_a_node_name_of_its_own() -> None:
    """Two workers on one host must not share Celery's default node name (celery@host): on
    RabbitMQ the second dies at start (tests/test_rabbitmq.py runs the Procfile's twice)."""
    assert "-n worker-$$@%h" in procfile()["worker"]
    assert "-n render-$$@%h" in procfile()["render"]
    for name in ("worker", "render"):
        unit = (ROOT / f"deploy/systemd/titan-archiver-{name}.service").read_text()
        assert " -n %N@%H " in unit


def test_systemd_units_run_real_commands() -> None:
    units = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
    assert len(units) == 4
    for unit in units:
        lines = unit.read_text().splitlines()
        for line in lines:
            if line.startswith(("ExecStart=", "ExecStartPre=")):
                _check_command(shlex.split(line.split("=", 1)[1]))
        if "worker" in unit.name or "render" in unit.name:
            assert "Environment=REMAP_SIGTERM=SIGQUIT" in lines


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-test.lock"])
def test_lock_files_pin_every_dependency_with_hashes(lock: str) -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    if lock == "requirements-test.lock":
        extras = project["optional-dependencies"]
        wanted += [r for r in extras["dev"] + extras["test"] if not r.startswith("titan-archiver")]
    text = (ROOT / lock).read_text()
    pins = {
        canonicalize_name(name): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\", text, re.M)
    }
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in {lock} (run scripts/lock)"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {line}"
    # Every pinned package carries at least one hash, so pip checks what it downloads.
    entries = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text)[1:]
    assert len(entries) == len(pins)
    assert all("--hash=sha256:" in entry for entry in entries)
    assert "file://" not in text and "--extra-index-url" not in text and "--find-links" not in text


def _rendered(path: str) -> list[dict[str, Any]]:
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here (Debian package kubernetes-client) to render Kustomize")
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    import yaml

    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("path", ["deploy/kubernetes", "deploy/kustomize/production"])
def test_kustomize_renders_restricted_probed_sized_pods_that_migrate_each_release(
    path: str,
) -> None:
    docs = _rendered(path)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {
        "titan-archiver-web",
        "titan-archiver-worker",
        "titan-archiver-worker-large",
        "titan-archiver-render",
        "titan-archiver-beat",
    }
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        # Pod Security Standard "restricted".
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
        for container in pod["containers"]:
            assert "livenessProbe" in container, f"{name} has no liveness probe"
            if name != "titan-archiver-beat":
                assert "readinessProbe" in container, f"{name} has no readiness probe"
    # Every rollout migrates before the new web pods serve: no fixed-name Job to re-create.
    web = deployments["titan-archiver-web"]["spec"]["template"]["spec"]
    assert [c["command"] for c in web["initContainers"]] == [["titan-archiver", "db", "upgrade"]]
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert jobs == []  # the optional Job (migrate-job.yaml) is not part of the base
    if path.endswith("production"):
        images = {
            c["image"]
            for d in deployments.values()
            for c in d["spec"]["template"]["spec"]["containers"]
        }
        assert images == {"registry.example.com/titan-archiver:0.1.0"}
        assert {d["metadata"].get("namespace") for d in docs} == {"titan-archiver"}
        assert any(d["kind"] == "PrometheusRule" for d in docs)


def test_the_optional_migration_job_cleans_up_after_itself() -> None:
    (job,) = _yaml_documents(ROOT / "deploy/kubernetes/migrate-job.yaml")
    # A finished Job is deleted, so the next release's apply creates a new one.
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
