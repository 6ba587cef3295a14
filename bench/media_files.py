"""Real media files of realistic sizes for the renditions benchmark, made with the same
libraries the product uses (Pillow, PyAV) and kept in a cache folder between runs."""

from __future__ import annotations

import io
import math
import os
import random
import struct
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageDraw

MB = 1_000_000


def photo(path: Path, size: tuple[int, int], quality: int) -> Path:
    """A photo-like JPEG: smooth gradients under grain, so it compresses like a real one."""
    if path.exists():
        return path
    width, height = size
    base = Image.linear_gradient("L").resize(size)
    grain = Image.effect_noise(size, 24)
    picture = Image.merge("RGB", (base, grain, base.transpose(Image.Transpose.ROTATE_180)))
    ImageDraw.Draw(picture).ellipse((width // 4, height // 4, width // 2, height // 2), "orange")
    picture.save(path, "JPEG", quality=quality)
    return path


def sticker(path: Path) -> Path:
    if not path.exists():
        picture = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
        ImageDraw.Draw(picture).ellipse((40, 40, 472, 472), fill=(250, 200, 30, 255))
        picture.save(path, "WEBP", quality=80)
    return path


def document(path: Path, pages: int) -> Path:
    """A PDF of scanned-looking pages (one JPEG image each)."""
    if not path.exists():
        sheets = []
        for n in range(pages):
            sheet = Image.new("RGB", (1240, 1754), "white")
            draw = ImageDraw.Draw(sheet)
            for line in range(40):
                draw.line(
                    (100, 120 + line * 38, 1100 - (n * 37 + line * 53) % 300, 120 + line * 38)
                )
            sheets.append(sheet)
        sheets[0].save(path, "PDF", save_all=True, append_images=sheets[1:], resolution=150)
    return path


def video(path: Path, *, megabytes: int, size: tuple[int, int] = (1280, 720)) -> Path:
    """An H.264 MP4 of about ``megabytes`` MB at 30 fps (grainy frames, so the bitrate
    holds), with AAC audio, its index (moov) at the end as a phone's recorder leaves it."""
    if path.exists():
        return path
    rate = 30
    bitrate = 12_000_000 if size[0] <= 1280 else 24_000_000
    seconds = max(2, math.ceil(megabytes * MB * 8 / bitrate))
    rng = random.Random(megabytes)
    grain = [Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)) for _ in range(6)]
    base = Image.linear_gradient("L").resize(size).convert("RGB")
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"preset": "ultrafast"}
        for n in range(seconds * rate):
            frame = Image.blend(base, grain[n % len(grain)], 0.35)
            ImageDraw.Draw(frame).rectangle(
                (n * 7 % size[0], 100, n * 7 % size[0] + 120, 220), "red"
            )
            picture = av.VideoFrame.from_image(frame)  # type: ignore[no-untyped-call]
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def voice_note(path: Path, seconds: int) -> Path:
    """An Ogg/Opus voice note (mono, 48 kHz), as WhatsApp records them."""
    if path.exists():
        return path
    with av.open(str(path), mode="w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48_000, layout="mono")
        stream.bit_rate = 24_000
        samples = 960
        for n in range(seconds * 50):
            tone = [
                int(8000 * math.sin(2 * math.pi * (220 + n % 50) * (n * samples + i) / 48_000))
                for i in range(samples)
            ]
            frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
            frame.planes[0].update(struct.pack(f"<{samples}h", *tone))
            frame.sample_rate = 48_000
            frame.pts = n * samples
            frame.time_base = Fraction(1, 48_000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def library(folder: Path) -> dict[str, Path]:
    """The benchmark's files by name (made once, then reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "photo": photo(folder / "photo.jpg", (1600, 1200), 80),  # WhatsApp's standard quality
        "photo-hd": photo(folder / "photo-hd.jpg", (4000, 3000), 90),  # sent as HD
        "sticker": sticker(folder / "sticker.webp"),
        "document": document(folder / "document.pdf", 8),
        "voice-note": voice_note(folder / "voice-note.ogg", 45),
        "video": video(folder / "video.mp4", megabytes=16),
        "video-200mb": video(folder / "video-200mb.mp4", megabytes=200, size=(1920, 1080)),
    }


def sizes(files: dict[str, Path]) -> dict[str, int]:
    return {name: os.path.getsize(path) for name, path in files.items()}


def decodes(data: bytes) -> bool:
    """Whether PyAV can open these bytes (a check of the generated files)."""
    try:
        with av.open(io.BytesIO(data)):
            return True
    except av.error.FFmpegError:
        return False
