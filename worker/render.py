"""Making renditions from a readable, seekable file: Pillow for images and stickers, PyAV
(FFmpeg inside its wheel) for video and audio, PDFium for PDFs. No binary is shelled out to.

Memory stays bounded whatever the file's size: the input is read through a seekable reader
(worker/ranged_reader.py), a JPEG is decoded at a reduced scale, an image whose decoded
pixels would still exceed ``MAX_PIXELS`` is refused, a video yields one decoded frame, audio
is transcoded frame by frame into a file on disk, and a PDF renders only its first page at
thumbnail scale.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from archiver.media.renditions import AUDIO, THUMBNAIL, THUMBNAIL_EDGE, needs_audio

log = logging.getLogger(__name__)

MAX_PIXELS = 12_000_000  # decoded, after a JPEG's reduced-scale decode: ~36 MB of RGB
MAX_FRAMES = 48  # of an animated sticker's thumbnail
WEBP_QUALITY = 70
AAC_BIT_RATE = 40_000  # per channel: speech in AAC-LC


class Unreadable(Exception):
    """The file cannot be read as its type (or not within the memory bound); the archive
    stands, only its renditions are given up."""


@dataclass
class Made:
    """What rendering found: facts for the row and rendition files (kind -> path)."""

    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None
    pages: int | None = None
    files: dict[str, Path] = field(default_factory=dict)


def render(source: IO[bytes], *, message_type: str, mime_type: str | None, workdir: Path) -> Made:
    """Render one file; ``Unreadable`` if it is not what its type says."""
    base = (mime_type or "").split(";")[0].strip().lower()
    try:
        if message_type in ("image", "sticker"):
            return _image(source, workdir)
        if message_type == "video":
            return _video(source, workdir)
        if message_type == "audio":
            return _audio(source, workdir, transcode=needs_audio(mime_type))
        if base == "application/pdf":
            return _pdf(source, workdir)
    except Unreadable:
        raise
    except MemoryError as exc:
        raise Unreadable("too large to render within the memory bound") from exc
    except Exception as exc:  # every decoder's own error tree: the file is not readable
        raise Unreadable(f"{type(exc).__name__}: {exc}"[:300]) from exc
    return Made()


# -- images and stickers ----------------------------------------------------------------


def _thumbnail_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, THUMBNAIL_EDGE / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _image(source: IO[bytes], workdir: Path) -> Made:
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        width, height = image.size
        made = Made(width=width, height=height)
        if getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) > 1:
            made.files[THUMBNAIL] = _animated(image, workdir)
            return made
        # A JPEG decodes straight at 1/2 .. 1/8 scale: a 48-megapixel photo costs no more.
        image.draft("RGB", (THUMBNAIL_EDGE * 2, THUMBNAIL_EDGE * 2))
        if image.size[0] * image.size[1] > MAX_PIXELS:
            raise Unreadable(f"{width}x{height} is over {MAX_PIXELS} pixels to decode")
        picture = ImageOps.exif_transpose(image)
        if picture.size != image.size and (width, height) == image.size[::-1]:
            made.width, made.height = height, width  # shown rotated, as the phone took it
        made.files[THUMBNAIL] = _save_webp(_shrunk(picture), workdir / "thumb.webp")
    return made


def _shrunk(picture: Any) -> Any:
    picture = picture if picture.mode in ("RGB", "RGBA") else picture.convert("RGBA")
    picture.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE))
    return picture


def _save_webp(picture: Any, path: Path) -> Path:
    picture.save(path, "WEBP", quality=WEBP_QUALITY, method=4)
    return path


def _animated(image: Any, workdir: Path) -> Path:
    """An animated WebP (or GIF) of at most MAX_FRAMES frames, each a thumbnail."""
    from PIL import Image, ImageSequence

    if image.size[0] * image.size[1] > MAX_PIXELS:
        raise Unreadable(f"{image.size[0]}x{image.size[1]} is over {MAX_PIXELS} pixels")
    size = _thumbnail_size(*image.size)
    frames: list[Image.Image] = []
    durations: list[int] = []
    for frame in ImageSequence.Iterator(image):
        if len(frames) == MAX_FRAMES:
            break
        frames.append(frame.convert("RGBA").resize(size, Image.Resampling.LANCZOS))
        durations.append(int(frame.info.get("duration", 100)) or 100)
    path = workdir / "thumb.webp"
    frames[0].save(
        path,
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
        quality=WEBP_QUALITY,
    )
    return path


# -- video and audio (PyAV) ---------------------------------------------------------------


def _open_av(source: IO[bytes]) -> Any:
    import av

    # A small read buffer: FFmpeg asks the reader for this much at a time.
    return av.open(source, mode="r", buffer_size=256 * 1024)


def _seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return round(float(stream.duration * stream.time_base), 3)
    if container.duration is not None:
        return round(float(container.duration) / 1_000_000, 3)
    return None


def _video(source: IO[bytes], workdir: Path) -> Made:
    with _open_av(source) as container:
        if not container.streams.video:
            raise Unreadable("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # no frame threads: one frame in flight, not one per core
        stream.codec_context.thread_count = 1
        made = Made(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            duration_seconds=_seconds(container, stream),
        )
        frame = _poster_frame(container, stream, made.duration_seconds)
        if frame is None:
            raise Unreadable("no frame could be decoded")
        picture = frame.to_image()
        rotation = int(getattr(frame, "rotation", 0) or 0)
        if rotation % 360:
            picture = picture.rotate(rotation, expand=True)
            if rotation % 180:
                made.width, made.height = made.height, made.width
        made.files[THUMBNAIL] = _save_webp(_shrunk(picture), workdir / "thumb.webp")
    return made


def _poster_frame(container: Any, stream: Any, duration: float | None) -> Any:
    """A frame a second in (or a tenth of a short clip), past a fade from black."""
    target = min(1.0, duration / 10) if duration else 0.0
    if target > 0 and stream.time_base is not None:
        try:
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
        except Exception:  # an unseekable stream: from the start then
            container.seek(0)
    first = None
    for frame in _frames(container, stream):
        first = first or frame
        if frame.time is None or frame.time >= target - 0.05:
            return frame
    return first


def _frames(container: Any, stream: Any) -> Iterator[Any]:
    for packet in container.demux(stream):
        yield from packet.decode()


def _audio(source: IO[bytes], workdir: Path, *, transcode: bool) -> Made:
    with _open_av(source) as container:
        if not container.streams.audio:
            raise Unreadable("no audio stream")
        stream = container.streams.audio[0]
        made = Made(duration_seconds=_seconds(container, stream))
        if transcode:
            made.files[AUDIO] = _to_m4a(container, stream, workdir / "audio.m4a")
    return made


def _to_m4a(container: Any, stream: Any, path: Path) -> Path:
    """AAC in an MP4 (.m4a) container: Safari and iOS play it."""
    import av

    layout = "mono" if stream.codec_context.channels == 1 else "stereo"
    with av.open(str(path), mode="w", format="ipod") as output:
        out = output.add_stream("aac", rate=48_000, layout=layout)
        out.bit_rate = AAC_BIT_RATE * (1 if layout == "mono" else 2)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=48_000, frame_size=1024)
        for frame in _frames(container, stream):
            for piece in resampler.resample(frame):
                output.mux(out.encode(piece))
        for piece in resampler.resample(None):
            output.mux(out.encode(piece))
        output.mux(out.encode(None))
    return path


# -- PDF (PDFium) -------------------------------------------------------------------------


def _pdf(source: IO[bytes], workdir: Path) -> Made:
    import pypdfium2

    # PDFium reads the file through callbacks on ``source``: only the parts it needs.
    document = pypdfium2.PdfDocument(source)
    try:
        made = Made(pages=len(document))
        if made.pages:
            page = document[0]
            try:
                width, height = page.get_size()  # in points: not the row's pixel size
                scale = THUMBNAIL_EDGE / max(width, height, 1.0)
                bitmap = page.render(scale=scale)
                made.files[THUMBNAIL] = _save_webp(bitmap.to_pil(), workdir / "thumb.webp")
                bitmap.close()
            finally:
                page.close()
        return made
    finally:
        document.close()


def probe(data: bytes, *, message_type: str, mime_type: str | None, workdir: Path) -> Made:
    """``render`` of bytes in memory (tests, the benchmark's small files)."""
    return render(io.BytesIO(data), message_type=message_type, mime_type=mime_type, workdir=workdir)
