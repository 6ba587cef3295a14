"""`titan-archiver dev`: the whole product locally on embedded defaults (devstack/dev.py)."""

from __future__ import annotations

import sys

import click

from archiver.cli.context import friendly


@click.command()
@click.option("--port", default=8000, show_default=True, type=int, help="Receiver port.")
@click.option("--data-dir", default=".archiver-dev", show_default=True, type=click.Path())
@click.option("--demo/--no-demo", default=True, help="Send a few signed demo webhooks.")
@click.option("--exit-after-demo", is_flag=True, help="Stop once the demo media is archived.")
@friendly
def dev(port: int, data_dir: str, demo: bool, exit_after_demo: bool) -> None:
    """Run everything locally on embedded defaults: SQLite, embedded Redis, local S3, simulator."""
    from devstack.dev import run_dev

    sys.exit(run_dev(port=port, data_dir=data_dir, demo=demo, exit_after_demo=exit_after_demo))
