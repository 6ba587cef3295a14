"""The dashboard in a real browser: Playwright drives headless Chromium against a running
stack (receiver, Celery worker, Titan simulator, S3 endpoint). Screenshots of every view
land in test-artifacts/screenshots/ (and in docs/screenshots/ with
ARCHIVER_UPDATE_SCREENSHOTS=1). Sign-in, cookie and CSRF rules are also checked over plain
HTTP, which needs no browser."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from devstack import processes
from devstack.fixtures import TenantSetup, add_tenant, process_env, start_web
from devstack.rig import RedisDatabases, Rig
from tests.conftest import migrated_database, s3_of
from titan_simulator.sender import SentMedia, Simulator

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Locator, Page

ROOT = Path(__file__).resolve().parent.parent
SHOTS = processes.ARTIFACTS / "screenshots"
ADMIN = "dashboard-admin-key-" + "a" * 12


@dataclass
class Stack(Rig):
    tenants: dict[str, TenantSetup]
    api_keys: dict[str, str]
    sent: dict[str, list[SentMedia]]
    gone: SentMedia

    @property
    def url(self) -> str:
        return self.receiver_url

    def deliver(self, tenant: str, item: SentMedia) -> int:
        return self.post(self.tenants[tenant], item.envelope).status_code

    def api(self, tenant: str, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_keys[tenant]}"}
        return self.client.get(f"{self.receiver_url}{path}", headers=headers)

    def status_of(self, tenant: str, media_id: str) -> str:
        return str(self.api(tenant, f"/api/media/{media_id}").json()["data"]["status"])


# The tenants' buckets on moto and on a real S3 server (Ceph's RADOS Gateway): the media
# the browser plays comes straight from the bucket (a presigned URL).
@pytest.fixture(scope="module", params=["moto", pytest.param("rgw", marks=pytest.mark.rgw)])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_dbs: RedisDatabases,
    pg_admin_url: str | None,
) -> Iterator[Stack]:
    from archiver.infra.db import make_engine, session_scope
    from archiver.tenants.api_keys import issue_key
    from archiver.tenants.tenants import get_tenant

    s3_endpoint = s3_of(request, request.param)
    tmp = tmp_path_factory.mktemp("dashboard")
    broker = redis_dbs.take()
    with migrated_database("sqlite", tmp, pg_admin_url) as database_url:
        env = process_env(database_url, broker, ARCHIVER_ADMIN_API_KEY=ADMIN)
        web = start_web("ui", env)
        procs = [
            *web.procs,
            processes.start_process("ui-worker", processes.worker_argv(concurrency=2), env),
            processes.start_process(
                "ui-render",
                [*processes.worker_argv(concurrency=1), "-n", "ui-render@%h"],
                {**env, "ARCHIVER_WORKER_QUEUES": "render"},
            ),
        ]
        try:
            sim_url, url = web.sim_url, web.receiver_url
            sim = Simulator(sim_url)
            tenants = {
                name: add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name=name)
                for name in ("acme", "globex")
            }
            engine = make_engine(database_url)
            with session_scope(engine) as session:
                api_keys = {
                    name: issue_key(session, tenant_id=get_tenant(session, name=name).id or 0)
                    for name in tenants
                }
            engine.dispose()
            media: dict[str, list[SentMedia]] = {"acme": [], "globex": []}
            for kind in ("image", "video", "audio", "sticker", "document", "video", "image"):
                media["acme"].append(
                    sim.make_media(
                        account="acme",
                        message_type=kind,
                        size=0,
                        sample=True,
                        filename="invoice-0042.pdf" if kind == "document" else None,
                        caption="Invoice photo" if kind == "image" else None,
                    )
                )
            media["globex"].append(
                sim.make_media(account="globex", message_type="image", size=0, sample=True)
            )
            gone = sim.make_media(
                account="acme", message_type="document", size=4000, gone=True, filename="lost.pdf"
            )
            client = httpx.Client(timeout=30)
            rig = Rig(database_url, s3_endpoint, url, sim, env, client)
            world = Stack(**vars(rig), tenants=tenants, api_keys=api_keys, sent=media, gone=gone)
            for tenant, items in media.items():
                for item in items:
                    assert world.deliver(tenant, item) == 202
            assert world.deliver("acme", gone) == 202
            processes.wait_until(
                lambda: (
                    all(
                        world.status_of(t, i.media_id) == "archived"
                        for t in media
                        for i in media[t]
                    )
                    and world.status_of("acme", gone.media_id) == "failed"
                ),
                timeout=120,
                what="the dashboard's media archived, and the gone one failed",
            )
            processes.wait_until(
                lambda: all(
                    world.api(t, f"/api/media/{i.media_id}").json()["data"]["renditions"]
                    for t in media
                    for i in media[t]
                ),
                timeout=120,
                what="every sample's renditions",
            )
            yield world
            client.close()
            sim.close()
        finally:
            for proc in reversed(procs):
                proc.stop()


# -- over plain HTTP -----------------------------------------------------------------------


def test_pages_need_a_session_and_a_wrong_key_is_refused(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as client:
        for path in ("/ui/", "/ui/media", "/ui/failures", "/ui/media/1"):
            answer = client.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login")
        assert client.get("/ui/content/1").status_code == 401
        refused = client.post("/ui/login", data={"key": "tak_not-a-real-key"})
        assert refused.status_code == 401 and "not valid" in refused.text
        assert "archiver_ui" not in refused.headers.get("set-cookie", "")
    forged_cookie = {"archiver_ui": "eyJrZXlfaWQiOjF9.forged"}
    with httpx.Client(base_url=stack.url, cookies=forged_cookie) as client:
        assert client.get("/ui/").status_code == 303


def test_session_cookie_is_httponly_strict_and_forms_need_the_csrf_token(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as client:
        signed_in = client.post("/ui/login", data={"key": stack.api_keys["acme"]})
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"]
        for flag in ("HttpOnly", "SameSite=strict", "Path=/ui"):
            assert flag in cookie
        assert stack.api_keys["acme"] not in cookie
        page = client.get("/ui/failures")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        # A cross-site form post carries the cookie at most, never the token.
        forged = client.post("/ui/failures/retry", data={})
        assert forged.status_code == 403
        assert stack.status_of("acme", stack.gone.media_id) == "failed"  # nothing was retried


def test_a_revoked_key_ends_its_dashboard_session(stack: Stack) -> None:
    from archiver.infra.db import make_engine, session_scope
    from archiver.tenants.api_keys import issue, revoke_key
    from archiver.tenants.tenants import get_tenant

    engine = make_engine(stack.database_url)
    with session_scope(engine) as session:
        _, key = issue(session, tenant_id=get_tenant(session, name="acme").id or 0, label="temp")
    with httpx.Client(base_url=stack.url) as client:
        assert client.post("/ui/login", data={"key": key}).status_code == 303
        assert client.get("/ui/media").status_code == 200
        with session_scope(engine) as session:
            revoke_key(session, prefix=key[:12])
        assert client.get("/ui/media").status_code == 303
    engine.dispose()


# -- in the browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = processes.chromium()
    if executable is None:
        pytest.skip("no Chromium here (scripts/test installs Debian's when it can: apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []

    # The pages run under their real Content-Security-Policy: any violation (an inline style
    # or script that slipped in) or script error fails the test.
    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    yield page
    context.close()
    assert [p for p in problems if "Content Security Policy" in p or "Error" in p] == []


def wait_js(page: Page, expression: str, timeout: float = 15) -> None:
    """Poll a JavaScript expression (evaluated over the DevTools protocol, so the page's
    CSP, which forbids eval, stays on) until it is true."""
    processes.wait_until(
        lambda: bool(page.evaluate(expression)),
        timeout=timeout,
        interval=0.1,
        what=expression,
    )


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("ARCHIVER_UPDATE_SCREENSHOTS") == "1":
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, docs / path.name)


def sign_in(page: Page, stack: Stack, key: str) -> None:
    page.goto(f"{stack.url}/ui/login")
    page.get_by_label("API key").fill(key)
    follow(page, page.get_by_role("button", name="Sign in"))


def follow(page: Page, target: Locator) -> None:
    """Click a link or submit button and wait until the page it leads to has loaded:
    click() alone returns once the click is dispatched, and reading the old page then races."""
    with page.expect_navigation():
        target.click()


def test_sign_in_is_refused_with_a_wrong_key(page: Page, stack: Stack) -> None:
    sign_in(page, stack, "tak_wrong-key-" + "z" * 20)
    alert = page.get_by_role("alert")
    assert "not valid" in alert.inner_text()
    assert page.url.endswith("/ui/login")
    shoot(page, "login-refused")


def test_overview_counts_bytes_rate_and_oldest_age(page: Page, stack: Stack) -> None:
    sign_in(page, stack, stack.api_keys["acme"])
    assert page.url.endswith("/ui/")
    total = len(stack.sent["acme"]) + 1  # and the gone one
    assert page.get_by_test_id("total").inner_text() == str(total)
    by_status = page.get_by_test_id("by-status").inner_text()
    assert re.search(r"archived\s+7\b", by_status) and re.search(r"failed\s+1\b", by_status)
    assert int(page.get_by_test_id("last-hour").inner_text()) >= 7
    assert "Nothing is waiting" in page.get_by_test_id("oldest").inner_text()
    shoot(page, "overview")


def test_filter_to_videos_open_one_and_it_plays(page: Page, stack: Stack) -> None:
    from playwright.sync_api import expect

    sign_in(page, stack, stack.api_keys["acme"])
    follow(page, page.get_by_role("link", name="Media"))
    tiles = page.locator("[data-testid=grid] > li")
    expect(tiles).to_have_count(len(stack.sent["acme"]) + 1)
    # Images render from their presigned URL: the browser decoded real pixels.
    wait_js(
        page,
        "[...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth > 0)",
    )
    shoot(page, "media-grid")
    page.get_by_label("Type").select_option("video")
    follow(page, page.get_by_role("button", name="Filter"))
    expect(tiles).to_have_count(2)
    kinds = tiles.evaluate_all("nodes => nodes.map(n => n.dataset.type)")
    assert kinds == ["video", "video"]
    shoot(page, "media-videos")
    follow(page, tiles.first.get_by_role("link"))
    video = page.locator("video")
    assert (video.get_attribute("poster") or "").endswith("?rendition=thumbnail")
    wait_js(page, "document.querySelector('video').readyState >= 1")
    duration = video.evaluate("v => v.duration")
    assert duration > 2.5, duration  # the 3-second sample, decoded by the browser
    video.evaluate("v => { v.muted = true; return v.play(); }")
    wait_js(page, "document.querySelector('video').currentTime > 0.3")
    info = page.get_by_test_id("info").inner_text()
    assert page.get_by_role("heading", level=1).inner_text().startswith("Video from Maria, ")
    for field in ("sha256", "messageId", "mimeType", "receivedAt", "archivedAt", "key"):
        assert field in info
    assert "video/mp4" in info
    download = page.get_by_role("link", name="Download")
    assert (download.get_attribute("href") or "").endswith("?download=1")
    shoot(page, "media-detail-video")


def test_grid_tiles_are_thumbnails_and_no_original_is_fetched(page: Page, stack: Stack) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, stack, stack.api_keys["acme"])
    page.goto(f"{stack.url}/ui/media")
    wait_js(
        page,
        "[...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth > 0)",
    )
    # Every sample but the voice note has a thumbnail (photos, stickers, the videos' posters,
    # the PDF's first page); the voice note shows its icon and length.
    thumbs = page.locator(".tile img[data-rendition=thumbnail]")
    assert thumbs.count() == len(stack.sent["acme"]) - 1
    widths = thumbs.evaluate_all("nodes => nodes.map(n => n.naturalWidth)")
    assert max(widths) <= 320 and min(widths) > 0
    audio = page.locator(".tile[data-type=audio] [data-icon=audio]")
    assert audio.count() == 1 and "0:04" in audio.inner_text()
    assert page.locator(".tile[data-type=video] .play").first.inner_text().endswith("0:03")
    content = [u for u in requested if "/ui/content/" in u]
    assert len(content) == thumbs.count()
    assert all(u.endswith("?rendition=thumbnail") for u in content), content
    # What the bucket was asked for (the presigned redirects): thumbnails only.
    from_bucket = [urlsplit(u).path for u in requested if "X-Amz-Signature" in u]
    assert from_bucket and all(path.endswith(".thumb.webp") for path in from_bucket), from_bucket
    shoot(page, "media-grid-thumbnails")


def test_a_voice_note_offers_its_m4a_where_ogg_does_not_play(page: Page, stack: Stack) -> None:
    sign_in(page, stack, stack.api_keys["acme"])
    page.goto(f"{stack.url}/ui/media?type=audio")
    follow(page, page.locator("[data-testid=grid] > li").first.get_by_role("link"))
    sources = page.locator("audio source")
    types = sources.evaluate_all("nodes => nodes.map(n => n.type)")
    assert types == ["audio/ogg; codecs=opus", "audio/mp4"]  # the browser takes the first it plays
    m4a = sources.nth(1).get_attribute("src") or ""
    assert m4a.endswith("?rendition=audio")
    # Ask for the m4a as Safari would get it: the browser decodes AAC from the bucket.
    duration = page.evaluate(
        """async (src) => {
            const audio = new Audio(src);
            await new Promise((done, failed) => {
                audio.onloadedmetadata = done;
                audio.onerror = () => failed(new Error("m4a: " + audio.error?.code));
            });
            return audio.duration;
        }""",
        m4a,
    )
    assert abs(duration - 4.0) < 0.2, duration
    answer = page.request.get(f"{stack.url}{m4a}")
    assert answer.ok and answer.headers["content-type"] == "audio/mp4"
    shoot(page, "media-detail-audio")


def test_retry_a_failed_item_and_it_becomes_archived(page: Page, stack: Stack) -> None:
    sign_in(page, stack, stack.api_keys["acme"])
    follow(page, page.get_by_role("link", name="Failures"))
    row = page.locator(f"[data-testid=failed] tr[data-media-id='{stack.gone.media_id}']")
    assert "404" in row.inner_text() or "not found" in row.inner_text().lower()
    shoot(page, "failures")
    # Titan has the file again (say the sender re-sent it), so a retry can now succeed.
    stack.sim.make_media(
        account="acme", message_type="document", size=4000, media_id=stack.gone.media_id
    )
    follow(page, row.get_by_role("button", name=f"Retry {stack.gone.media_id}"))
    assert "1 item(s) queued again" in page.get_by_role("status").inner_text()
    processes.wait_until(
        lambda: stack.status_of("acme", stack.gone.media_id) == "archived",
        timeout=60,
        what="the retried item archived",
    )
    page.goto(f"{stack.url}/ui/failures")
    assert "No failed items." in page.inner_text("main")


def test_tenant_a_never_sees_tenant_b(page: Page, stack: Stack) -> None:
    theirs = stack.sent["globex"][0].media_id
    sign_in(page, stack, stack.api_keys["acme"])
    page.goto(f"{stack.url}/ui/media")
    shown = page.locator("[data-testid=grid] > li").evaluate_all(
        "nodes => nodes.map(n => [n.dataset.tenant, n.dataset.mediaId])"
    )
    assert {tenant for tenant, _ in shown} == {"acme"} and theirs not in {m for _, m in shown}
    pk = stack.api("globex", f"/api/media/{theirs}").json()["data"]
    assert pk["tenant"] == "globex"
    # Guessing the other tenant's row numbers finds nothing.
    for number in range(1, 20):
        answer = page.request.get(f"{stack.url}/ui/media/{number}")
        assert answer.status in (200, 404)
        if answer.status == 200:
            assert theirs not in answer.text() and "globex" not in answer.text()
        content = page.request.get(f"{stack.url}/ui/content/{number}", max_redirects=0)
        if content.status == 307:
            assert stack.tenants["globex"].bucket not in content.headers["location"]
    # The admin key sees both tenants.
    page.context.clear_cookies()
    sign_in(page, stack, ADMIN)
    page.goto(f"{stack.url}/ui/media")
    tenants = page.locator("[data-testid=grid] > li").evaluate_all(
        "nodes => nodes.map(n => n.dataset.tenant)"
    )
    assert set(tenants) == {"acme", "globex"}
    shoot(page, "media-grid-admin")


def test_readable_on_a_phone(browser: Browser, stack: Stack) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    page = context.new_page()
    sign_in(page, stack, stack.api_keys["acme"])
    page.goto(f"{stack.url}/ui/media")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width}px)"
    shoot(page, "media-grid-phone")
    # Keyboard: the skip link and the filters are reachable with Tab.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    context.close()


def test_retry_all_requeues_every_failed_item_of_the_tenant_only(stack: Stack) -> None:
    gone = stack.sim.make_media(account="acme", message_type="image", size=500, gone=True)
    theirs = stack.sim.make_media(account="globex", message_type="image", size=500, gone=True)
    assert stack.deliver("acme", gone) == 202 and stack.deliver("globex", theirs) == 202
    processes.wait_until(
        lambda: (
            stack.status_of("acme", gone.media_id) == "failed"
            and stack.status_of("globex", theirs.media_id) == "failed"
        ),
        timeout=60,
        what="both failed",
    )
    asked = stack.sim.stats().get("answered_404", 0)
    # Each of acme's failed items is asked for once more: this one, and the module's gone
    # one unless a test that ran before in this process has had it archived.
    failed = stack.api("acme", "/api/media?status=failed&limit=100").json()["data"]
    assert gone.media_id in {item["id"] for item in failed}
    with httpx.Client(base_url=stack.url) as client:
        assert client.post("/ui/login", data={"key": stack.api_keys["acme"]}).status_code == 303
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/failures").text)
        assert csrf is not None
        answer = client.post("/ui/failures/retry", data={"csrf": csrf.group(1)})
        assert (answer.status_code, answer.headers["location"]) == (
            303,
            f"/ui/failures?retried={len(failed)}",
        )
    # Titan is asked again for acme's items (still gone, so they fail again); globex's stays put.
    processes.wait_until(
        lambda: (
            stack.sim.stats().get("answered_404", 0) >= asked + len(failed)
            and stack.status_of("acme", gone.media_id) == "failed"
        ),
        timeout=60,
        what="acme's items retried",
    )
    assert stack.sim.stats().get("answered_404", 0) == asked + len(failed)
    assert stack.status_of("globex", theirs.media_id) == "failed"


def test_chats_list_the_conversations_and_open_one(page: Page, stack: Stack) -> None:
    group = "120363042@g.us"
    item = stack.sim.make_media(
        account="globex", message_type="image", size=0, sample=True, caption=None
    )
    item.envelope["payload"] |= {
        "from": {"id": group},
        "sender": {"phoneNumber": "+5511333333333", "lid": "77@lid", "mode": "pn"},
        "isGroup": True,
        "pushName": "Ana",
    }
    assert stack.deliver("globex", item) == 202
    processes.wait_until(
        lambda: stack.status_of("globex", item.media_id) == "archived",
        timeout=60,
        what="the group image archived",
    )
    sign_in(page, stack, stack.api_keys["globex"])
    follow(page, page.get_by_role("link", name="Chats"))
    rows = page.locator("[data-testid=chats] tbody tr")
    lines = rows.evaluate_all(
        "rows => rows.map(r => [r.dataset.chat, r.cells[0].innerText, r.cells[1].innerText, "
        "r.querySelector('[data-field=count]').innerText])"
    )
    # Newest first: the group, then the one-to-one chat named by its contact's pushName.
    assert lines[0] == [group, group, "group", "1"]
    assert lines[1][0] == "+5511999999999" and lines[1][1].startswith("Maria")
    maria = stack.api("globex", "/api/media?chat=%2B5511999999999&limit=100").json()["data"]
    assert lines[1][2:] == ["one-to-one", str(len(maria))] and len(lines) == 2
    shoot(page, "chats")
    follow(page, page.get_by_role("link", name=group))
    assert "chat=" in page.url
    tiles = page.locator("[data-testid=grid] > li")
    assert tiles.evaluate_all("n => n.map(t => t.dataset.mediaId)") == [item.media_id]
    # A caption-less item is titled by its type, sender and time, and shows its conversation.
    tile = tiles.first
    assert tile.locator(".name").inner_text().startswith("Image from Ana, ")
    assert tile.locator("[data-field=chat]").inner_text() == f"group {group} · Ana"
    follow(page, tile.get_by_role("link"))
    said = page.get_by_test_id("conversation").inner_text()
    assert said == f"In group {group}, from Ana (+5511333333333)"


def test_the_admin_sees_the_audit_trail_of_sign_ins(page: Page, stack: Stack) -> None:
    sign_in(page, stack, stack.api_keys["acme"])
    assert page.get_by_role("link", name="Audit").count() == 0
    assert page.request.get(f"{stack.url}/ui/audit").status == 403
    page.context.clear_cookies()
    sign_in(page, stack, ADMIN)
    follow(page, page.get_by_role("link", name="Audit"))
    actions = page.locator("[data-testid=audit] tbody tr").evaluate_all(
        "rows => rows.map(r => [r.cells[1].innerText, r.dataset.action, r.cells[3].innerText])"
    )
    assert actions[0] == ["admin", "dashboard.sign-in", "\u2013"]
    assert any(a[1:] == ["dashboard.sign-in", "acme"] and a[0].startswith("key:") for a in actions)
    shoot(page, "audit")
