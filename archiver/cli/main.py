"""``titan-archiver``: the operator's command line; one module per command group."""

from __future__ import annotations

import click

from archiver.cli import api_keys, audit, db, dev, keys, media, reconcile, status, tenants


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="titan-archiver", message="%(prog)s %(version)s")
def main() -> None:
    """Archive Titan WhatsApp media into each tenant's own S3-compatible bucket."""


main.add_command(db.db)
main.add_command(tenants.tenants)
main.add_command(api_keys.api_keys_group)
main.add_command(keys.keys)
main.add_command(media.media)
main.add_command(reconcile.reconcile)
main.add_command(status.status)
main.add_command(audit.audit)
main.add_command(dev.dev)

if __name__ == "__main__":
    main()
