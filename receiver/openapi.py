"""The OpenAPI 3.1 document and a human docs page, built from the code's own definitions: the
query filters (archiver/media/query.py) and the public shapes (archiver/media/shapes.py)."""

from __future__ import annotations

import html
import json
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import CoreSchema
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from archiver.media.query import FILTERS
from archiver.media.renditions import KINDS as RENDITION_KINDS
from archiver.media.shapes import API_SHAPES
from archiver.names import MAX_ID_LEN, SESSION_RE


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "A parameter is invalid; the message starts with its name.",
        401: "Missing or invalid API key.",
        403: "A tenant key asked for another tenant, or for an admin route.",
        404: "Not found (or not visible to this key).",
        409: "Not archived yet, or stored outside the tenant's bucket.",
        413: "Body larger than ARCHIVER_MAX_BODY_BYTES.",
        503: "Database or broker unavailable; retry after Retry-After seconds.",
    }
    return {str(s): _json(_ref("Error"), meaning[s]) for s in statuses}


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
    {"type": "string", "pattern": SESSION_RE.pattern},
    "Admin key only (required with it): the media's tenant.",
)
ID_PARAM = _param(
    "id", {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}, "Titan's mediaId.", "path"
)


class _Untitled(GenerateJsonSchema):
    """Properties carry their JSON name and description; a generated title adds nothing."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


def component_schemas() -> dict[str, Any]:
    """The JSON Schema of every public shape (archiver/media/shapes.py), as OpenAPI components."""
    _, top = models_json_schema(
        [(shape, "serialization") for shape in API_SHAPES],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
        schema_generator=_Untitled,
    )
    schemas: dict[str, Any] = top["$defs"]
    return schemas


def _get(
    operation_id: str,
    summary: str,
    parameters: list[dict[str, Any]],
    responses: dict[str, Any],
    *,
    secured: bool = True,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if secured:
        operation["security"] = [{"apiKey": []}]
    return {"get": {**operation, "parameters": parameters, "responses": responses}}


def document() -> dict[str, Any]:
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
            "schemas": component_schemas(),
        },
        "paths": {
            "/api/media": _get(
                "listMedia",
                "List media, newest first, with filters and cursor paging",
                [_param(f.name, f.schema, f.description) for f in FILTERS],
                {
                    "200": _json(_ref("MediaPage"), "One page of media."),
                    **_errors(400, 401, 403, 404, 503),
                },
            ),
            "/api/media/{id}": _get(
                "getMedia",
                "One media row",
                [ID_PARAM, TENANT_PARAM],
                {
                    "200": _json(_ref("OneMedia"), "The media row."),
                    **_errors(400, 401, 403, 404, 503),
                },
            ),
            "/api/media/{id}/content": _get(
                "getMediaContent",
                "Redirect to a short-lived presigned URL of the archived file, or of one of "
                "its renditions",
                [
                    ID_PARAM,
                    TENANT_PARAM,
                    _param(
                        "rendition",
                        {"type": "string", "enum": list(RENDITION_KINDS)},
                        "A rendition instead of the original (see MediaInfo.renditions); "
                        "404 while the file has none of that kind.",
                    ),
                ],
                {
                    "307": {"description": "Location is a presigned GET URL (never stored)."},
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            ),
            "/api/media/{id}/thumbnail": _get(
                "getMediaThumbnail",
                "Redirect to a presigned URL of the file's thumbnail (image/webp, about 320 px "
                "on the long side: an image's, a video's poster frame, a PDF's first page)",
                [ID_PARAM, TENANT_PARAM],
                {
                    "307": {"description": "Location is a presigned GET URL (never stored)."},
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            ),
            "/api/stats": _get(
                "getStats",
                "Counts and bytes by status and type; oldest unarchived age",
                [TENANT_PARAM],
                {
                    "200": _json(_ref("StatsAnswer"), "Statistics."),
                    **_errors(400, 401, 403, 404, 503),
                },
            ),
            "/api/admin/erase": {
                "post": {
                    "operationId": "eraseMedia",
                    "summary": "Admin: delete a tenant's media for good (objects, every "
                    "version, and rows) by ids, sender or chat",
                    "security": [{"apiKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["tenant"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "tenant": {"type": "string", "pattern": SESSION_RE.pattern},
                                        "ids": {
                                            "type": "array",
                                            "items": {"type": "string"},
                                            "minItems": 1,
                                            "maxItems": 1000,
                                        },
                                        "sender": {"type": "string", "maxLength": 255},
                                        "chat": {"type": "string", "maxLength": 255},
                                        "includeHeld": {"type": "boolean"},
                                    },
                                    "description": "tenant, and exactly one of ids, sender, chat",
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_ref("ErasureAnswer"), "What was removed and kept."),
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/api/admin/audit": _get(
                "listAudit",
                "Admin: the audit trail, newest first",
                [
                    _param("tenant", {"type": "string"}, "Only actions on this tenant."),
                    _param("action", {"type": "string"}, "An action, or a family ('tenant.')."),
                    _param("actor", {"type": "string"}, "admin, key:<id>, cli:<user>, ..."),
                    _param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Rows."),
                ],
                {
                    "200": _json(_ref("AuditPage"), "Audit records."),
                    **_errors(400, 401, 403, 503),
                },
            ),
            "/api/admin/export-bundle": {
                "post": {
                    "operationId": "exportBundle",
                    "summary": "Admin: make an eDiscovery export (a BagIt bag) of a tenant's "
                    "archived media, as a background job on the workers (ARCHIVER_EXPORT_DIR)",
                    "security": [{"apiKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["tenant"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "tenant": {"type": "string", "pattern": SESSION_RE.pattern},
                                        "chat": {"type": "string", "maxLength": 255},
                                        "sender": {"type": "string", "maxLength": 255},
                                        "since": {"type": "string", "maxLength": 64},
                                        "until": {"type": "string", "maxLength": 64},
                                        "zip": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json(_ref("ExportJobAnswer"), "The export, queued."),
                        **_errors(400, 401, 403, 404, 409, 503),
                    },
                }
            },
            "/api/admin/export-bundle/{job}": _get(
                "getExportBundle",
                "Admin: an export job and how it went",
                [_param("job", {"type": "string"}, "The export's id.", "path")],
                {
                    "200": _json(_ref("ExportJobAnswer"), "The export."),
                    **_errors(401, 403, 404, 503),
                },
            ),
            "/webhooks/{tenant}": {
                "post": {
                    "operationId": "receiveWebhook",
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
                        "200": _json(
                            {
                                "oneOf": [
                                    _ref("WebhookAnswer"),
                                    _ref("Ignored"),
                                    _ref("NotCaptured"),
                                    _ref("SessionState"),
                                    _ref("Revoked"),
                                ]
                            },
                            "A duplicate; an event not archived (or left out by the "
                            "tenant's capture policy); a session event that paused or "
                            "resumed the session's media; a revocation recorded.",
                        ),
                        "202": _json(_ref("WebhookAnswer"), "Media recorded and queued."),
                        **_errors(400, 401, 413, 503),
                    },
                }
            },
            "/healthz": _get(
                "health",
                "Process is up",
                [],
                {"200": _json(_ref("Health"), "Up.")},
                secured=False,
            ),
            "/readyz": _get(
                "readiness",
                "Ready to accept webhooks: the database and the broker answer",
                [],
                {
                    "200": _json(_ref("Readiness"), "Ready."),
                    "503": _json(_ref("Readiness"), "A dependency is down; see checks."),
                },
                secured=False,
            ),
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
