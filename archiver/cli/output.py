"""What commands print: JSON, and media rows as a table, JSON, JSON lines or CSV."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any

import click

from archiver.media.shapes import MEDIA_INFO_COLUMNS


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def csv_row(doc: dict[str, Any]) -> dict[str, Any]:
    """A MediaInfo as one CSV row: a list (``renditions``) as its JSON, not Python's repr."""
    return {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in doc.items()}


def print_media(docs: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        echo_json(docs)
    elif fmt == "jsonl":
        for doc in docs:
            click.echo(json.dumps(doc))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, MEDIA_INFO_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_row(doc) for doc in docs)
    else:
        columns = ("tenant", "session", "id", "type", "size", "status", "key", "lastError")
        table = [
            [str(doc.get(c) if doc.get(c) is not None else "") for c in columns] for doc in docs
        ]
        widths = [max([len(c)] + [len(r[i][:60]) for r in table]) for i, c in enumerate(columns)]
        click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in table:
            click.echo("  ".join(v[:60].ljust(w) for v, w in zip(row, widths, strict=True)))
