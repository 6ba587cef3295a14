"""Making renditions from real files (the simulator's samples, and files made here): what each
kind yields, that the results decode, and that unreadable input is refused, not crashed on."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, cast

import av
import pytest
from PIL import Image, ImageDraw

from archiver.media import renditions
from titan_simulator.content import sample_bytes
from worker.ranged_reader import RangedReader
from worker.render import MAX_FRAMES, Unreadable, probe

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _open_image(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def test_a_photo_gets_a_webp_thumbnail_320_pixels_on_its_long_side(tmp_path: Path) -> None:
    made = probe(
        sample_bytes("image"), message_type="image", mime_type="image/jpeg", workdir=tmp_path
    )
    assert (made.width, made.height) == (480, 360)
    thumb = _open_image(made.files[renditions.THUMBNAIL])
    assert thumb.format == "WEBP" and thumb.size == (320, 240)
    assert made.duration_seconds is None and renditions.AUDIO not in made.files


def test_a_sticker_is_thumbnailed_and_an_animated_one_stays_animated(tmp_path: Path) -> None:
    made = probe(
        sample_bytes("sticker"), message_type="sticker", mime_type="image/webp", workdir=tmp_path
    )
    assert (made.width, made.height) == (256, 256)
    assert _open_image(made.files[renditions.THUMBNAIL]).size == (256, 256)  # never enlarged

    frames = []
    for i in range(60):  # a square that moves: no two frames alike, so none are merged
        frame = Image.new("RGBA", (512, 512), (255, 255, 255, 255))
        ImageDraw.Draw(frame).rectangle((i * 8, 100, i * 8 + 60, 160), fill=(200, 0, 0, 255))
        frames.append(frame)
    animated = io.BytesIO()
    frames[0].save(animated, "WEBP", save_all=True, append_images=frames[1:], duration=40)
    out = tmp_path / "animated"
    out.mkdir()
    made = probe(animated.getvalue(), message_type="sticker", mime_type="image/webp", workdir=out)
    with Image.open(made.files[renditions.THUMBNAIL]) as thumb:
        assert getattr(thumb, "is_animated", False) and thumb.size == (320, 320)
        shown = 0
        for index in range(getattr(thumb, "n_frames", 1)):
            thumb.seek(index)
            thumb.load()
            shown += int(thumb.info["duration"])
    # The first MAX_FRAMES frames (the encoder may merge alike ones): memory stays bounded.
    assert shown == MAX_FRAMES * 40


def test_a_video_gets_its_size_duration_and_a_poster_frame(tmp_path: Path) -> None:
    made = probe(
        sample_bytes("video"), message_type="video", mime_type="video/mp4", workdir=tmp_path
    )
    assert (made.width, made.height, made.duration_seconds) == (320, 240, 3.0)
    poster = _open_image(made.files[renditions.THUMBNAIL])
    assert poster.format == "WEBP" and poster.size == (320, 240)
    # A frame a second in, not the black of a fade-in: the sample's frames have colour.
    assert max(cast("list[int]", poster.convert("L").get_flattened_data())) > 40


def test_an_ogg_voice_note_gets_its_duration_and_an_m4a_safari_plays(tmp_path: Path) -> None:
    made = probe(
        sample_bytes("audio"),
        message_type="audio",
        mime_type="audio/ogg; codecs=opus",
        workdir=tmp_path,
    )
    assert made.duration_seconds is not None and abs(made.duration_seconds - 4.0) < 0.1
    with av.open(str(made.files[renditions.AUDIO])) as m4a:
        stream = m4a.audio[0] if hasattr(m4a, "audio") else m4a.streams.audio[0]
        assert stream.codec_context.name == "aac"
        assert m4a.format.name.startswith("mov,mp4,m4a")
        assert m4a.duration is not None and abs(m4a.duration / 1_000_000 - 4.0) < 0.2
    assert renditions.THUMBNAIL not in made.files


def test_audio_that_plays_everywhere_gets_only_its_duration(tmp_path: Path) -> None:
    made = probe(
        sample_bytes("video"), message_type="audio", mime_type="audio/mp4", workdir=tmp_path
    )
    assert made.duration_seconds == 3.0 and made.files == {}


def test_a_pdf_gets_its_page_count_and_a_first_page_thumbnail(tmp_path: Path) -> None:
    made = probe(
        sample_bytes("document"),
        message_type="document",
        mime_type="application/pdf",
        workdir=tmp_path,
    )
    assert made.pages == 1 and made.width is None  # a page has points, not pixels
    page = _open_image(made.files[renditions.THUMBNAIL])
    assert max(page.size) == 320


@pytest.mark.parametrize(
    ("message_type", "mime_type"),
    [
        ("image", "image/jpeg"),
        ("sticker", "image/webp"),
        ("video", "video/mp4"),
        ("audio", "audio/ogg"),
        ("document", "application/pdf"),
    ],
)
def test_noise_under_a_media_type_is_unreadable_not_a_crash(
    tmp_path: Path, message_type: str, mime_type: str
) -> None:
    noise = bytes(range(256)) * 400
    with pytest.raises(Unreadable):
        probe(noise, message_type=message_type, mime_type=mime_type, workdir=tmp_path)


def test_other_documents_get_nothing(tmp_path: Path) -> None:
    made = probe(
        b"PK\x03\x04", message_type="document", mime_type="application/zip", workdir=tmp_path
    )
    assert made.files == {} and made.pages is None


def test_a_huge_photo_decodes_at_a_reduced_scale(tmp_path: Path) -> None:
    big = io.BytesIO()
    Image.new("RGB", (8000, 6000), (200, 30, 30)).save(big, "JPEG", quality=50)
    made = probe(big.getvalue(), message_type="image", mime_type="image/jpeg", workdir=tmp_path)
    assert (made.width, made.height) == (8000, 6000)
    assert _open_image(made.files[renditions.THUMBNAIL]).size == (320, 240)


def test_a_huge_png_is_refused_rather_than_decoded(tmp_path: Path) -> None:
    big = io.BytesIO()
    Image.new("L", (5000, 5000)).save(big, "PNG")  # 25 Mpx: over the bound, and no draft mode
    with pytest.raises(Unreadable, match="pixels"):
        probe(big.getvalue(), message_type="image", mime_type="image/png", workdir=tmp_path)


def test_rendition_keys_sit_beside_the_original_and_round_trip_on_the_row() -> None:
    key = "acme/support/2026-11-23/ABC.mp4"
    assert renditions.key_for(key, renditions.THUMBNAIL) == key + ".thumb.webp"
    assert renditions.key_for(key, renditions.AUDIO) == key + ".m4a"
    made = [renditions.Rendition("thumbnail", "image/webp", key + ".thumb.webp", 10, "ab" * 32)]
    text = renditions.dumps(made)
    assert renditions.loads(text) == made and renditions.keys(text) == [key + ".thumb.webp"]
    assert renditions.public(text) == [{"kind": "thumbnail", "mimeType": "image/webp", "size": 10}]
    assert renditions.loads("not json") == [] and renditions.loads(None) == []
    assert renditions.renderable("document", "application/pdf")
    assert not renditions.renderable("document", "application/zip")
    assert renditions.needs_audio("audio/ogg; codecs=opus") and not renditions.needs_audio(
        "audio/mp4"
    )


class _Bucket:
    """A stand-in for the S3 client's ranged GET (the real one is tested in test_renditions)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[str] = []

    def get_object(self, *, Bucket: str, Key: str, Range: str) -> dict[str, object]:
        self.ranges.append(Range)
        start, end = (int(n) for n in Range.removeprefix("bytes=").split("-"))
        return {"Body": io.BytesIO(self.data[start : end + 1])}


def test_the_ranged_reader_fetches_only_the_blocks_read_and_keeps_a_few() -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB
    bucket = _Bucket(data)
    reader = RangedReader(
        cast("S3Client", bucket), bucket="b", key="k", size=len(data), block_size=1 << 20, blocks=2
    )
    assert reader.read(10) == data[:10]
    reader.seek(-100, io.SEEK_END)
    assert reader.read() == data[-100:]
    reader.seek(5_000_000)
    assert reader.read(3 << 20) == data[5_000_000 : 5_000_000 + (3 << 20)]
    assert reader.read(0) == b"" and reader.tell() == 5_000_000 + (3 << 20)
    assert bucket.ranges[0] == "bytes=0-1048575"
    # Blocks 0, 9 (the last, short) and 4-7: the unread rest was never fetched.
    assert reader.fetched == (1 << 20) + (len(data) - 9 * (1 << 20)) + 4 * (1 << 20)
    reader.seek(0)
    assert reader.read(5) == data[:5]  # block 0 again: only two blocks are kept
    assert len(bucket.ranges) == reader.requests == 7
