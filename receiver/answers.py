"""HTTP answers written from the public shapes (archiver/media/shapes.py), and the error answer."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from archiver.media.shapes import Error, Shape


class ShapeResponse(Response):
    """A JSON answer serialized straight from its pydantic shape."""

    media_type = "application/json"

    def __init__(
        self, shape: Shape, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(shape.to_json(), status_code=status_code, headers=headers)


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> ShapeResponse:
    """``{"error": message}``; a 401 also says how to authenticate."""
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return ShapeResponse(Error(error=message), status, headers)
