"""``titan-sim``: run the Titan simulator, or send signed media webhooks to a receiver."""

from __future__ import annotations

import json

import click
import httpx
import uvicorn

from titan_simulator.app import create_app
from titan_simulator.sender import MIME_BY_TYPE, Simulator, post_signed


@click.group()
def main() -> None:
    """The Titan WhatsApp API simulator used by titan-archiver's tests and demo."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option("--account", "accounts", multiple=True, metavar="API_KEY=ACCOUNT")
def serve(host: str, port: int, accounts: tuple[str, ...]) -> None:
    """Serve the simulated media API."""
    from titan_simulator.state import World

    world = World()
    for pair in accounts:
        key, _, account = pair.partition("=")
        world.accounts[key] = account or "default"
    uvicorn.run(create_app(world), host=host, port=port, log_level="warning")


@main.command()
@click.option("--simulator", required=True, help="Simulator base URL")
@click.option(
    "--target", required=True, help="Webhook URL, e.g. http://127.0.0.1:8000/webhooks/acme"
)
@click.option("--hmac-key", required=True)
@click.option("--account", default="default", show_default=True)
@click.option("--session", default="default", show_default=True)
@click.option("--type", "message_type", type=click.Choice(sorted(MIME_BY_TYPE)), default="image")
@click.option("--size", default=100_000, show_default=True, type=int)
@click.option("--count", default=1, show_default=True, type=int)
def send(
    simulator: str,
    target: str,
    hmac_key: str,
    account: str,
    session: str,
    message_type: str,
    size: int,
    count: int,
) -> None:
    """Create media in the simulator and deliver a signed webhook for each."""
    sim = Simulator(simulator)
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            item = sim.make_media(
                account=account, message_type=message_type, size=size, session=session
            )
            answer = post_signed(client, target, hmac_key, item.envelope)
            click.echo(
                json.dumps(
                    {"mediaId": item.media_id, "sha256": item.sha256, "status": answer.status_code}
                )
            )
