"""What the web process holds while it serves, built in the app's lifespan (after any fork)
and read by the route handlers through ``of(request)``."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine
from starlette.requests import Request

from archiver.infra.buckets import TenantS3Clients
from archiver.settings import Settings
from receiver.intake import Intake
from receiver.metrics import ReceiverMetrics


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: Engine
    celery: Celery
    s3: TenantS3Clients  # for presigned reads of the tenants' buckets
    metrics: ReceiverMetrics
    intake: Intake


def of(request: Request) -> Resources:
    """The resources of the app serving ``request``."""
    found = request.app.state.resources
    assert isinstance(found, Resources), "the app's lifespan has not run"
    return found
