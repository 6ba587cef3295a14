"""Envelope parsing: what we archive, what we ignore, what we refuse."""

import json
from typing import Any

import pytest

from archiver.errors import PayloadError
from archiver.media.capture import CapturePolicy, not_captured, parse_types
from receiver import envelope as envelope_module
from receiver.envelope import (
    Revocation,
    SessionChange,
    media_item,
    parse_body,
    revocation,
    session_change,
)


def envelope(**payload: Any) -> dict[str, Any]:
    base = {
        "id": "3EB0A1",
        "from": {"phoneNumber": "+5511999999999", "lid": "1234@lid", "mode": "pn"},
        "type": "image",
        "body": "Invoice photo",
        "timestamp": 1736937072,
        "mediaId": "abc123def456",
        "mimeType": "image/jpeg",
        "fileLength": 102400,
    }
    return {
        "id": "evt_7f3c2a91",
        "event": "message.received",
        "session": "support",
        "timestamp": "2025-01-15T10:31:12Z",
        "payload": {k: v for k, v in (base | payload).items() if v is not None},
    }


def test_reads_a_documented_media_message() -> None:
    item = media_item(envelope())
    assert item is not None
    assert (item.media_id, item.session, item.message_id) == ("abc123def456", "support", "3EB0A1")
    assert (item.message_type, item.mime_type, item.file_length) == ("image", "image/jpeg", 102400)
    assert (item.sender, item.caption, item.event_id) == (
        "+5511999999999",
        "Invoice photo",
        "evt_7f3c2a91",
    )
    assert (
        item.message_at is not None and item.message_at.isoformat() == "2025-01-15T10:31:12+00:00"
    )
    assert item.media_url is None


@pytest.mark.parametrize(
    ("sent", "stored", "voice_note"),
    [
        ("ptt", "audio", True),
        ("voice", "audio", True),
        ("audio", "audio", False),
        ("file", "document", False),
        ("document", "document", False),
    ],
)
def test_voice_notes_are_audio_and_files_are_documents(
    sent: str, stored: str, voice_note: bool
) -> None:
    item = media_item(envelope(type=sent))
    assert item is not None
    assert (item.message_type, item.voice_note) == (stored, voice_note)


@pytest.mark.parametrize("sent", [["ptt"], {"type": "voice"}, 7])
def test_a_type_that_is_not_a_string_is_refused_not_a_crash(sent: Any) -> None:
    with pytest.raises(PayloadError, match="type"):
        media_item(envelope(type=sent))


def test_falls_back_to_data_when_payload_is_absent() -> None:
    doc = envelope()
    doc["data"] = doc.pop("payload")
    assert media_item(doc) is not None


def test_accepts_a_nested_media_object() -> None:
    doc = envelope(mediaId=None, mimeType=None, fileLength=None)
    doc["payload"]["media"] = {
        "mediaId": "n1",
        "mimeType": "video/mp4",
        "fileLength": 5,
        "caption": "c",
    }
    item = media_item(doc)
    assert item is not None
    assert (item.media_id, item.mime_type, item.file_length, item.caption) == (
        "n1",
        "video/mp4",
        5,
        "Invoice photo",
    )


def test_id_and_timestamp_are_optional() -> None:
    doc = envelope()
    del doc["id"], doc["timestamp"]
    item = media_item(doc)
    assert item is not None and item.event_id is None


def test_group_messages_name_the_participant() -> None:
    item = media_item(
        envelope(**{"from": {"id": "123@g.us"}, "sender": {"phoneNumber": "+441234"}})
    )
    assert item is not None and item.sender == "+441234"


def test_keeps_the_auto_persisted_media_url() -> None:
    item = media_item(envelope(mediaUrl="https://bucket.s3.amazonaws.com/x.jpg"))
    assert item is not None and item.media_url == "https://bucket.s3.amazonaws.com/x.jpg"


@pytest.mark.parametrize(
    "doc",
    [
        {"event": "message.ack", "payload": {"mediaId": "x"}},
        {"event": "session.status", "payload": {}},
        {"event": "command.result", "data": {"ok": True}},
        {"event": "some.future.event"},
    ],
)
def test_other_events_are_not_media(doc: dict[str, Any]) -> None:
    assert media_item(doc) is None


def test_text_messages_are_not_media() -> None:
    assert media_item(envelope(mediaId=None, type="text")) is None


@pytest.mark.parametrize(
    "change",
    [
        {"mediaId": ""},
        {"mediaId": {"nested": 1}},
        {"mediaId": "x" * 256},
        {"mediaId": "a\x00b"},
        {"fileLength": -1},
        {"fileLength": "lots"},
        {"mimeType": "not a mime"},
    ],
)
def test_refuses_unusable_media_fields(change: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        media_item(envelope(**change))


@pytest.mark.parametrize("session", [None, "", "../x", "-lead", "a" * 65, 5])
def test_refuses_bad_session_names(session: Any) -> None:
    doc = envelope()
    doc["session"] = session
    with pytest.raises(PayloadError):
        media_item(doc)


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b'"s"', b"\xff\xfe", b"{" * 5000])
def test_refuses_bodies_that_are_not_a_json_object(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_body(body)


def test_refuses_deeply_nested_json() -> None:
    deep: Any = {}
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(PayloadError):
        parse_body(json.dumps(deep).encode())


@pytest.mark.parametrize("leaf", [1, {}, []])
@pytest.mark.parametrize("levels", range(26, 38))
def test_the_nesting_limit_is_exact_at_its_edge(levels: int, leaf: Any) -> None:
    # The walk is skipped for bodies with fewer brackets than the limit: both ways must
    # draw the line at the same depth.
    doc: Any = leaf
    for _ in range(levels):
        doc = {"a": doc}
    body = json.dumps(doc).encode()
    if envelope_module._depth(doc) > envelope_module.MAX_JSON_DEPTH:
        with pytest.raises(PayloadError, match="nested too deeply"):
            parse_body(body)
    else:
        assert parse_body(body) == doc


def test_session_events_that_hold_or_release_a_sessions_media() -> None:
    def status(state: str, reason: str | None = None) -> dict[str, object]:
        payload: dict[str, object] = {"status": state}
        if reason is not None:
            payload["statusReason"] = reason
        return {"event": "session.status", "session": "support", "payload": payload}

    logged_out = session_change(status("DISCONNECTED", "LOGGED_OUT"))
    assert logged_out == SessionChange("support", True, "logged out (session.status LOGGED_OUT)")
    banned = session_change(status("DISCONNECTED", "TEMPORARY_BAN"))
    assert banned is not None and banned.paused and "banned" in banned.reason
    assert session_change(status("CONNECTED")) == SessionChange("support", False, "connected")
    # A disconnect that reconnects by itself, or a session still connecting, holds nothing.
    assert session_change(status("DISCONNECTED", "AUTO_RECONNECT")) is None
    assert session_change(status("CONNECTING", "SCAN_QR")) is None
    event = {"event": "session.logged_out", "session": "sales", "data": {}}
    assert session_change(event) == SessionChange("sales", True, "logged out (session.logged_out)")
    assert session_change({"event": "message.ack", "session": "support"}) is None
    with pytest.raises(PayloadError):
        session_change({"event": "session.logged_out", "session": "../etc"})


def test_every_item_keeps_its_conversation() -> None:
    one_to_one = media_item(envelope(fromMe=False, pushName="Maria", isGroup=False))
    assert one_to_one is not None
    assert (one_to_one.chat, one_to_one.is_group, one_to_one.from_me) == (
        "+5511999999999",
        False,
        False,
    )
    assert one_to_one.sender_name == "Maria"
    # The contact in the form Titan's mode names.
    by_lid = media_item(envelope(**{"from": {"phoneNumber": "+1", "lid": "77@lid", "mode": "lid"}}))
    assert by_lid is not None and by_lid.chat == "77@lid"
    group = media_item(
        envelope(
            **{
                "from": {"id": "120363@g.us"},
                "sender": {"phoneNumber": "+4915", "lid": "9@lid", "mode": "pn"},
                "pushName": "Jo\u00e3o \U0001f600\x00",
            }
        )
    )
    assert group is not None
    assert (group.chat, group.is_group, group.sender) == ("120363@g.us", True, "+4915")
    assert group.sender_name == "Jo\u00e3o \U0001f600" and group.from_me is None
    # Nothing said, nothing stored.
    bare = media_item(envelope(**{"from": None}))
    assert bare is not None and (bare.chat, bare.is_group, bare.sender_name) == (None, None, None)
    # An id longer than any Titan issues is not kept (cut short, it would name another chat);
    # the media is still archived.
    long = media_item(envelope(**{"from": {"id": "x" * 300 + "@g.us"}}))
    assert long is not None and long.chat is None and long.is_group is True


def test_sent_media_is_media_from_me_in_the_recipients_chat() -> None:
    doc = envelope(to="+5511888888888", fromMe=None) | {"event": "message.sent"}
    item = media_item(doc)
    assert item is not None
    assert (item.from_me, item.chat, item.is_group) == (True, "+5511888888888", None)
    # No recipient named: the chat is what ``from`` says, still from me.
    plain = media_item(envelope() | {"event": "message.sent"})
    assert plain is not None and plain.from_me is True and plain.chat == "+5511999999999"


def test_status_media_is_in_the_broadcast_chat() -> None:
    item = media_item(envelope(**{"from": {"id": "status@broadcast"}, "isGroup": False}))
    assert item is not None and item.chat == "status@broadcast"


def test_revocations_name_the_message_in_any_known_form() -> None:
    def revoke(event: str, **payload: Any) -> dict[str, Any]:
        return {"event": event, "session": "support", "payload": payload}

    assert revocation(revoke("message.revoked", revokedMessageId="M1", id="R9")) == Revocation(
        "support", "M1", "message.revoked"
    )
    assert revocation(revoke("message.delete", key={"id": "M2"})) == Revocation(
        "support", "M2", "message.delete"
    )
    assert revocation(revoke("message.revoked", id="M3")) == Revocation(
        "support", "M3", "message.revoked"
    )
    assert revocation(revoke("message.revoked")) is None  # no id: acknowledged, ignored
    assert revocation(revoke("message.ack", id="M3")) is None
    with pytest.raises(PayloadError):
        revocation({"event": "message.revoked", "session": "bad name", "payload": {"id": "x"}})


def test_the_capture_policy_says_why_an_item_is_left_out() -> None:
    received = media_item(envelope())
    sent = media_item(envelope() | {"event": "message.sent"})
    group = media_item(envelope(**{"from": {"id": "120363@g.us"}, "isGroup": True}))
    status = media_item(envelope(**{"from": {"id": "status@broadcast"}}))
    video = media_item(envelope(type="video", fileLength=70 * 2**20))
    assert None not in (received, sent, group, status, video)
    assert received and sent and group and status and video
    default = CapturePolicy()
    assert [not_captured(default, i) for i in (received, sent, group, status, video)] == [
        None,
        "outgoing",
        None,
        None,
        None,
    ]
    strict = CapturePolicy(
        outgoing=True, status=False, groups=False, types=parse_types("image"), max_bytes=2**20
    )
    assert [not_captured(strict, i) for i in (received, sent, group, status, video)] == [
        None,
        None,
        "group",
        "status",
        "type",
    ]
    assert not_captured(CapturePolicy(max_bytes=1000), received) == "size"
    assert parse_types(" Image, video ") == frozenset({"image", "video"})
    assert parse_types("") is None
    with pytest.raises(PayloadError, match="unknown type 'gif'"):
        parse_types("image,gif")


def test_captions_keep_their_text_and_lose_only_nuls_and_lone_surrogates() -> None:
    def dropped(c: str) -> bool:
        return c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF

    captions = [
        "Invoice photo",
        "line one\nline two\r\n\ttabbed",  # not printable, nothing to drop
        "a\x00b\x00",
        "\x00",
        "Jo\u00e3o \U0001f600 na praia\n",
        "caf\u00e9\x00 \ud83d alone",  # a lone surrogate from a JSON escape
        "\udfff\ud800",
        "x" * 5000 + "\x00",
    ]
    for caption in captions:
        item = media_item(envelope(caption=caption))
        assert item is not None
        expected = "".join(c for c in caption[:4096] if not dropped(c)) or None
        assert item.caption == expected, caption[:40]
    # A body that escapes a lone surrogate decodes (json's fallback) and loses only it.
    body = json.dumps(envelope(caption="ok \ud800 here\n")).encode()
    parsed = media_item(parse_body(body))
    assert parsed is not None and parsed.caption == "ok  here\n"
