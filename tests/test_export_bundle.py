"""eDiscovery export: `media export-bundle` writes a BagIt bag (folder or .zip) that the
bagit library validates, with the files streamed from the bucket, metadata.jsonl, the
ledger records and audit events of those media, and an index.html that a browser opens
from the file system with no server. Real receiver, archive and render workers; moto."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bagit
import pytest

from archiver.tables import RenderState
from devstack import processes, services
from devstack.fixtures import TenantSetup, process_env
from devstack.rig import RedisDatabases, Rig, running_rig
from tests.conftest import migrated_database

GROUP = "120363111@g.us"
ADMIN = "bundle-admin-key-" + "b" * 16


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, s3_endpoint: str
) -> Iterator[tuple[Rig, TenantSetup, list[str], Path]]:
    tmp: Path = tmp_path_factory.mktemp("bundle")
    with migrated_database("sqlite", tmp, None) as database_url:
        env = process_env(
            database_url,
            redis_dbs.take(),
            ARCHIVER_SEAL_INTERVAL_SECONDS="1",
            ARCHIVER_ADMIN_API_KEY=ADMIN,
            ARCHIVER_EXPORT_DIR=str(tmp / "exports"),
        )
        (tmp / "exports").mkdir()
        with running_rig(
            "bundle",
            database_url=database_url,
            s3_endpoint=s3_endpoint,
            env=env,
            tmp=tmp,
            render=True,
        ) as rig:
            tenant = rig.tenant("evidence")
            items = []
            for kind in ("image", "document", "image"):
                item = rig.sim.make_media(
                    account=tenant.name, message_type=kind, size=0, sample=True
                )
                items.append(item)
            group = rig.sim.make_media(
                account=tenant.name, message_type="image", size=0, sample=True
            )
            group.envelope["payload"].update(
                {"from": {"id": GROUP}, "isGroup": True, "pushName": "Ana"}
            )
            items.append(group)
            rig.send(tenant, *items)
            rig.wait_status(items, "archived", tenant=tenant)
            processes.wait_until(
                lambda: all(
                    r.render_state in (RenderState.DONE, RenderState.FAILED)
                    and r.sealed_seq is not None
                    for r in rig.rows(tenant).values()
                ),
                timeout=90,
                what="renditions made and archive records sealed",
            )
            rig.cli("media", "hold", "--tenant", tenant.name, "--id", items[0].media_id)
            yield rig, tenant, [i.media_id for i in items], tmp


def test_the_bag_validates_and_holds_every_file_with_its_records(
    exported: tuple[Rig, TenantSetup, list[str], Path],
) -> None:
    rig, tenant, ids, tmp = exported
    out = tmp / "bag-all"
    result = json.loads(
        rig.cli("media", "export-bundle", "--tenant", tenant.name, "--out", str(out)).stdout
    )
    assert result["files"] == 4 and result["thumbnails"] >= 3
    bag = bagit.Bag(str(out))
    bag.validate()  # every payload file against manifest-sha256, the tag files, Payload-Oxum
    assert "sha256" in bag.algorithms
    assert bag.info["Source-Organization"] == tenant.name
    assert bag.info["Contact-Name"].startswith("cli:")
    docs = [json.loads(line) for line in (out / "data/metadata.jsonl").read_text().splitlines()]
    assert sorted(d["id"] for d in docs) == sorted(ids)
    rows = rig.rows(tenant)
    for doc in docs:
        path = out / "data" / doc["path"]
        assert (
            path.stat().st_size == rows[doc["id"]].size and doc["sha256"] == rows[doc["id"]].sha256
        )
    records = [json.loads(line) for line in (out / "data/audit.jsonl").read_text().splitlines()]
    sealed = {r["body"]["mediaId"] for r in records if r["record"] == "ledger"}
    assert sealed == set(ids)  # each file's archive record, with its link in the chain
    holds = [r for r in records if r["record"] == "audit" and r["action"] == "media.hold"]
    assert holds and holds[0]["detail"]["ids"] == [ids[0]]

    # A damaged bag is caught by the same library: one changed byte.
    first = out / "data" / docs[0]["path"]
    data = first.read_bytes()
    first.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # never the byte it was
    with pytest.raises(bagit.BagValidationError):
        bagit.Bag(str(out)).validate()


def test_a_zip_bag_of_one_chat_and_its_index_in_a_browser(
    exported: tuple[Rig, TenantSetup, list[str], Path],
) -> None:
    rig, tenant, ids, tmp = exported
    out = tmp / "group.zip"
    result = json.loads(
        rig.cli(
            "media", "export-bundle", "--tenant", tenant.name, "--chat", GROUP, "--out", str(out)
        ).stdout
    )
    assert result["files"] == 1
    unpacked = tmp / "unzipped"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(unpacked)
    bag_dir = unpacked / "group"
    bagit.Bag(str(bag_dir)).validate()
    (doc,) = [
        json.loads(line) for line in (bag_dir / "data/metadata.jsonl").read_text().splitlines()
    ]
    assert doc["id"] == ids[3] and doc["conversation"] == GROUP

    index = tmp / "bag-browse"
    rig.cli("media", "export-bundle", "--tenant", tenant.name, "--out", str(index))
    _read_in_chromium(index / "data/index.html", ids)


def test_an_object_gone_from_the_bucket_stops_the_export_naming_it(
    exported: tuple[Rig, TenantSetup, list[str], Path],
) -> None:
    rig, tenant, ids, tmp = exported
    row = rig.rows(tenant)[ids[1]]
    s3 = services.s3_client(rig.s3_endpoint)
    body = s3.get_object(Bucket=tenant.bucket, Key=str(row.object_key))["Body"].read()
    s3.delete_object(Bucket=tenant.bucket, Key=str(row.object_key))
    try:
        out = tmp / "bag-broken"
        refused = rig.cli(
            "media", "export-bundle", "--tenant", tenant.name, "--out", str(out), codes=(1,)
        )
        assert ids[1] in refused.stderr and "media verify" in refused.stderr
        assert not out.exists() and "Traceback" not in refused.stderr  # nothing half-written
    finally:
        s3.put_object(Bucket=tenant.bucket, Key=str(row.object_key), Body=body)
    exists = rig.cli(
        "media", "export-bundle", "--tenant", tenant.name, "--out", str(tmp), codes=(2,)
    )
    assert "already exists" in exists.stderr


def test_the_admin_api_makes_the_same_bag_as_a_background_job(
    exported: tuple[Rig, TenantSetup, list[str], Path],
) -> None:
    rig, tenant, ids, tmp = exported
    admin = {"Authorization": f"Bearer {ADMIN}"}
    url = f"{rig.receiver_url}/api/admin/export-bundle"
    asked = rig.client.post(url, headers=admin, json={"tenant": tenant.name, "zip": True})
    assert asked.status_code == 202, asked.text
    job = asked.json()["data"]
    assert job["status"] == "queued" and job["path"].endswith(".zip")

    def finished() -> bool:
        now = rig.client.get(f"{url}/{job['id']}", headers=admin).json()["data"]
        return bool(now["status"] in ("done", "failed"))

    processes.wait_until(finished, timeout=60, what="the export job")
    done = rig.client.get(f"{url}/{job['id']}", headers=admin).json()["data"]
    assert done["status"] == "done" and done["result"]["files"] == len(ids), done
    with zipfile.ZipFile(done["path"]) as archive:
        archive.extractall(tmp / "from-api")
    (bag_dir,) = (tmp / "from-api").iterdir()
    bagit.Bag(str(bag_dir)).validate()
    # Refused plainly: a bad body, an unknown tenant, a tenant's key, an unknown job.
    assert (
        rig.client.post(url, headers=admin, json={"tenant": tenant.name, "x": 1}).status_code == 400
    )
    assert rig.client.post(url, headers=admin, json={"tenant": "ghost"}).status_code == 404
    assert (
        rig.client.post(
            url, headers=admin, json={"tenant": tenant.name, "since": "soon"}
        ).status_code
        == 400
    )
    assert rig.client.get(f"{url}/999999", headers=admin).status_code == 404
    key = json.loads(rig.cli("api-keys", "create", tenant.name).stdout)["apiKey"]
    mine = {"Authorization": f"Bearer {key}"}
    assert rig.client.post(url, headers=mine, json={"tenant": tenant.name}).status_code == 403


def _read_in_chromium(index: Path, ids: list[str]) -> None:
    executable = processes.chromium()
    if executable is None:
        pytest.skip("no Chromium here (scripts/test installs Debian's when it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            shown = page.eval_on_selector_all(
                "figure[data-media]", "els => els.map(e => e.dataset.media)"
            )
            assert sorted(shown) == sorted(ids)
            assert page.locator("h2").all_inner_texts().count(GROUP) == 1
            loaded: Any = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
            )
            assert loaded and all(loaded)  # thumbnails read from the bag's own folder
            assert all(url.startswith("file://") for url in requests)  # no network at all
            link = page.locator("figure a").first.get_attribute("href")
            assert link is not None and (index.parent / link).is_file()
        finally:
            browser.close()
