"""The OpenAPI 3.1 document and a human docs page, built from the code's own definitions."""

from __future__ import annotations

import html
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from archiver.media_info import MEDIA_INFO_SCHEMA
from archiver.media_query import FILTERS

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "A parameter is invalid; the message starts with its name.",
        401: "Missing or invalid API key.",
        403: "A tenant key asked for another tenant.",
        404: "Not found (or not visible to this key).",
        409: "Not archived yet, or stored outside the tenant's bucket.",
        413: "Body larger than ARCHIVER_MAX_BODY_BYTES.",
        503: "Database or broker unavailable; retry after Retry-After seconds.",
    }
    return {str(s): _json(ERROR, meaning[s]) for s in statuses}


def _param(
    name: str, schema: dict[str, Any], description: str, where: str = "query"
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


TENANT_PARAM = _param(
    "tenant",
    {"type": "string", "pattern": "^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$"},
    "Admin key only (required with it): the media's tenant.",
)
ID_PARAM = _param(
    "id", {"type": "string", "minLength": 1, "maxLength": 255}, "Titan's mediaId.", "path"
)
COUNTS = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "required": ["count", "bytes"],
        "properties": {"count": {"type": "integer"}, "bytes": {"type": "integer"}},
    },
}


def document() -> dict[str, Any]:
    secured = [{"apiKey": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "titan-archiver",
            "version": "1",
            "description": "Archived WhatsApp media metadata. Authenticate with "
            "'Authorization: Bearer <apiKey>' (a tenant key, or the admin key).",
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "MediaInfo": MEDIA_INFO_SCHEMA,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            },
        },
        "paths": {
            "/api/media": {
                "get": {
                    "summary": "List media, newest first, with filters and cursor paging",
                    "security": secured,
                    "parameters": [_param(f.name, f.schema, f.description) for f in FILTERS],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["data", "nextCursor"],
                                "properties": {
                                    "data": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/MediaInfo"},
                                    },
                                    "nextCursor": {"type": ["string", "null"]},
                                },
                            },
                            "One page of media.",
                        ),
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/api/media/{id}": {
                "get": {
                    "summary": "One media row",
                    "security": secured,
                    "parameters": [ID_PARAM, TENANT_PARAM],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["data"],
                                "properties": {"data": {"$ref": "#/components/schemas/MediaInfo"}},
                            },
                            "The media row.",
                        ),
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/api/media/{id}/content": {
                "get": {
                    "summary": "Redirect to a short-lived presigned URL of the archived file",
                    "security": secured,
                    "parameters": [ID_PARAM, TENANT_PARAM],
                    "responses": {
                        "307": {"description": "Location is a presigned GET URL (never stored)."},
                        **_errors(400, 401, 403, 404, 409, 503),
                    },
                }
            },
            "/api/stats": {
                "get": {
                    "summary": "Counts and bytes by status and type; oldest unarchived age",
                    "security": secured,
                    "parameters": [TENANT_PARAM],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["data"],
                                "properties": {
                                    "data": {
                                        "type": "object",
                                        "required": [
                                            "byStatus",
                                            "byType",
                                            "oldestUnarchivedAgeSeconds",
                                        ],
                                        "properties": {
                                            "byStatus": COUNTS,
                                            "byType": COUNTS,
                                            "oldestUnarchivedAgeSeconds": {
                                                "type": ["number", "null"]
                                            },
                                        },
                                    }
                                },
                            },
                            "Statistics.",
                        ),
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/webhooks/{tenant}": {
                "post": {
                    "summary": "Titan webhook delivery (signed with X-Webhook-Signature)",
                    "parameters": [
                        _param("tenant", {"type": "string"}, "Tenant name.", "path"),
                        _param(
                            "X-Webhook-Signature", {"type": "string"}, "sha256=<hex HMAC>", "header"
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": _json({"type": "object"}, "Ignored event, or a duplicate delivery."),
                        "202": _json({"type": "object"}, "Media recorded and queued."),
                        **_errors(400, 401, 413, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Process is up",
                    "responses": {"200": _json({"type": "object"}, "Up.")},
                }
            },
        },
    }


async def openapi_json(_: Request) -> Response:
    return JSONResponse(document())


async def docs_page(_: Request) -> Response:
    """Plain HTML from the same document: no scripts, no CDN, readable offline."""
    doc = document()
    parts = [
        f"<h1>{html.escape(doc['info']['title'])} API</h1>",
        f"<p>{html.escape(doc['info']['description'])}</p>",
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a></p>',
    ]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>")
            parts.append(f"<p>{html.escape(op['summary'])}</p>")
            if op.get("parameters"):
                rows = "".join(
                    f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
                    f"<td><code>{html.escape(json.dumps(p['schema']))}</code></td>"
                    f"<td>{html.escape(p.get('description', ''))}</td></tr>"
                    for p in op["parameters"]
                )
                parts.append(
                    "<table><tr><th>name</th><th>in</th><th>schema</th><th>meaning</th></tr>"
                    f"{rows}</table>"
                )
            answers = "".join(
                f"<li><b>{code}</b> {html.escape(r['description'])}</li>"
                for code, r in op["responses"].items()
            )
            parts.append(f"<ul>{answers}</ul>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem;text-align:left}"
    )
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>titan-archiver API</title>"
        f"<meta name=viewport content='width=device-width'><style>{style}</style></head>"
        f"<body>{''.join(parts)}</body></html>"
    )
    return HTMLResponse(page)
