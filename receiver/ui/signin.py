"""Signing in to the dashboard: a tenant's API key (that tenant only) or the admin key
(every tenant), kept in a signed cookie (receiver/ui/session.py); who is looking."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from archiver.errors import NotFound, PayloadError
from archiver.governance import audit
from archiver.infra.db import session_scope
from archiver.settings import Settings
from archiver.tenants.api_keys import active_key, key_for
from receiver import resources
from receiver.principal import Principal
from receiver.ui.session import COOKIE, PATH, SessionSigner, UiSession, admin_fingerprint, csrf_ok

log = logging.getLogger(__name__)
MAX_FORM_BYTES = 16 * 1024
Render = Callable[..., HTMLResponse]


@dataclass(frozen=True)
class Viewer(Principal):
    """Who is looking: a Principal signed in to the dashboard (its cookie's session)."""

    session: UiSession


class NotSignedIn(Exception):
    pass


async def form_fields(request: Request) -> dict[str, str]:
    """A small urlencoded form's fields (the first value of each); too large is a 400."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PayloadError("form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items() if v}


class SignIn:
    """The sign-in and sign-out pages, and who a request's cookie signs in."""

    def __init__(self, settings: Settings, render: Render) -> None:
        admin = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
        self._admin_key = admin
        self._signer = SessionSigner(settings.master_key(), ttl_seconds=8 * 3600)
        self._render = render

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/ui/login", self.login_form, methods=["GET"]),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
        ]

    def viewer(self, engine: Engine, request: Request) -> Viewer:
        """Who signed this request in, or NotSignedIn (no cookie, expired, revoked key)."""
        session = self._signer.load(request.cookies.get(COOKIE))
        if session is None:
            raise NotSignedIn
        if session.admin:
            if self._admin_key is None or not hmac.compare_digest(
                session.admin_print or "", admin_fingerprint(self._admin_key)
            ):
                raise NotSignedIn
            return Viewer(tenant=None, session=session)
        with session_scope(engine) as db:
            try:
                return Viewer(tenant=active_key(db, key_id=session.key_id or 0), session=session)
            except NotFound as exc:
                raise NotSignedIn from exc

    async def login_form(self, request: Request) -> Response:
        return self._render("login.html", viewer=None, error=None)

    async def login(self, request: Request) -> Response:
        form = await form_fields(request)
        key = form.get("key", "").strip()

        def authenticate() -> UiSession | None:
            if not key or len(key) > 200:
                return None
            engine = resources.of(request).engine
            if self._admin_key is not None and hmac.compare_digest(
                key.encode(), self._admin_key.encode()
            ):
                with session_scope(engine) as db:
                    audit.record(db, actor="admin", action="dashboard.sign-in")
                return self._signer.new(key_id=None, admin_print=admin_fingerprint(self._admin_key))
            with session_scope(engine) as db:
                try:
                    api_key, owner = key_for(db, key=key)
                except NotFound:
                    return None
                audit.record(
                    db,
                    actor=f"key:{api_key.id}",
                    action="dashboard.sign-in",
                    tenant_id=api_key.tenant_id,
                    tenant=owner.name,
                )
            return self._signer.new(key_id=api_key.id, admin_print=None)

        session = await run_in_threadpool(authenticate)
        if session is None:
            log.info("dashboard sign-in refused", extra={"outcome": "unauthorized"})
            return self._render(
                "login.html", 401, viewer=None, error="That key is not valid (or was revoked)."
            )
        log.info(
            "dashboard sign-in",
            extra={"outcome": "signed_in", "admin": session.admin, "keyId": session.key_id},
        )
        response = RedirectResponse("/ui/", status_code=303)
        response.set_cookie(
            COOKIE,
            self._signer.dump(session),
            max_age=self._signer.ttl_seconds,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        session = self._signer.load(request.cookies.get(COOKIE))
        form = await form_fields(request)
        if session is not None and not csrf_ok(session, form.get("csrf")):
            return self._render("error.html", 403, message="Stale form; reload.", viewer=None)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path=PATH)
        return response
