"""Object keys are deterministic and no opaque id can escape its segment."""

from datetime import UTC, datetime

import pytest

from archiver.errors import ConfigError
from archiver.object_keys import DEFAULT_TEMPLATE, extension, object_key, validate_template

WHEN = datetime(2025, 1, 15, 10, 31, tzinfo=UTC)


def key(media_id: str = "abc123", **kw: str) -> str:
    args = {"prefix": "", "tenant": "acme", "session": "support", "mime_type": "image/jpeg"} | kw
    return object_key(DEFAULT_TEMPLATE, media_id=media_id, when=WHEN, **args)


def test_builds_key_from_tenant_session_date_and_media_id() -> None:
    assert key() == "acme/support/2025-01-15/abc123.jpg"


def test_same_inputs_give_the_same_key() -> None:
    assert key("x") == key("x")


def test_prefix_is_normalised() -> None:
    assert (
        key(prefix="/archive//whatsapp/") == "archive/whatsapp/acme/support/2025-01-15/abc123.jpg"
    )


@pytest.mark.parametrize(
    "media_id", ["../../etc/passwd", "a/b", "..", ".", "a\nb", "a b?c#d", "%2F"]
)
def test_hostile_media_ids_stay_one_segment(media_id: str) -> None:
    built = key(media_id)
    assert built.count("/") == 3
    segment = built.split("/")[3]
    assert segment not in {".", ".."}
    assert not any(ord(c) < 0x20 for c in built)


def test_distinct_ids_never_collide_after_escaping() -> None:
    ids = ["a/b", "a%2Fb", "a b", "a+b", "..", "%2E%2E"]
    assert len({key(i) for i in ids}) == len(ids)


def test_extension_comes_from_the_mime_type() -> None:
    assert extension("video/mp4") == ".mp4"
    assert extension("APPLICATION/PDF") == ".pdf"
    assert extension("application/x-unknown") == ".bin"
    assert extension(None) == ".bin"


@pytest.mark.parametrize(
    "template", ["{tenant}/{date}", "{media_id}{nope}", "/{media_id}", "{media_id"]
)
def test_rejects_templates_that_could_collide_or_are_malformed(template: str) -> None:
    with pytest.raises(ConfigError):
        validate_template(template)


def test_the_chat_can_name_a_folder() -> None:
    template = "{tenant}/{chat}/{media_id}{ext}"
    validate_template(template)

    def key(mime_type: str | None, chat: str | None) -> str:
        return object_key(
            template,
            prefix="",
            tenant="acme",
            session="s",
            media_id="m",
            mime_type=mime_type,
            when=WHEN,
            chat=chat,
        )

    assert key("image/jpeg", "120363@g.us") == "acme/120363@g.us/m.jpg"
    assert key(None, "../x") == "acme/..%2Fx/m.bin"
    assert key(None, None) == "acme/unknown/m.bin"
