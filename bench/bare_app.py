"""The physical limit for ingest: a bare Starlette endpoint that reads the body and answers 202."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)


app = Starlette(routes=[Route("/webhooks/{tenant}", receive, methods=["POST"])])


def create_app() -> Starlette:
    """The same app as a factory, so it runs under the Procfile's very command line."""
    return app
