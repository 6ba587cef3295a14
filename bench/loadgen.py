"""Closed-loop HTTP load: wrk when installed, else a Python asyncio generator (slower; said so).

Each request POSTs a distinct signed media event: body = prefix + id + suffix, where the
signature of every id is computed here and read by the load generator from a file.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from titan_simulator.sender import media_envelope, signature

MARK = "MEDIAIDMARK"


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def body_parts(pad_to: int = 1500, line_length: int = 0) -> tuple[str, str]:
    """A ~1.5 KB message.received envelope split around its mediaId; its caption is one
    printable line, or lines of ``line_length`` characters (what people type) when given."""
    env = media_envelope(
        media_id=MARK,
        message_id="3EB0BENCH",
        session="support",
        message_type="image",
        mime_type="image/jpeg",
        size=100_000,
        caption="x",
    )
    room = max(0, pad_to - len(json.dumps(env, separators=(",", ":"))))
    caption = "c" * room
    if line_length > 0:
        lines = room // (line_length + 1)  # a line's newline is two bytes in JSON, ``\n``
        line = "c" * (line_length - 1) + "\n"
        caption = line * lines + "c" * (room - lines * (line_length + 1))
    env["payload"]["caption"] = caption
    text = json.dumps(env, separators=(",", ":"))
    prefix, suffix = text.split(MARK)
    return prefix, suffix


def media_id(run: str, i: int) -> str:
    return f"{run}{i:09d}"


def run_load(
    url: str,
    *,
    hmac_key: str,
    run: str,
    count: int,
    connections: int,
    seconds: float,
    threads: int = 2,
    caption_lines: int = 0,
) -> Load:
    prefix, suffix = body_parts(line_length=caption_lines)
    # The signatures (25 MB at the benches' 400,000) and wrk's script, gone after the run.
    with tempfile.TemporaryDirectory(prefix="loadgen-") as name:
        tmp = Path(name)
        sigs = tmp / "sigs.txt"
        with sigs.open("w") as out:
            for i in range(count):
                out.write(
                    signature(f"{prefix}{media_id(run, i)}{suffix}".encode(), hmac_key)[7:] + "\n"
                )
        if shutil.which("wrk"):
            return _wrk(url, tmp, sigs, prefix, suffix, run, connections, seconds, threads)
        return asyncio.run(_python(url, sigs, prefix, suffix, run, connections, seconds))


def _lua(s: str) -> str:
    return "[==[" + s + "]==]"


def _wrk(
    url: str,
    tmp: Path,
    sigs: Path,
    prefix: str,
    suffix: str,
    run: str,
    connections: int,
    seconds: float,
    threads: int,
) -> Load:
    script = tmp / "post.lua"
    script.write_text(f"""
local sigs = {{}}
for line in io.lines("{sigs}") do sigs[#sigs + 1] = line end
local prefix, suffix = {_lua(prefix)}, {_lua(suffix)}
local threads_seen = 0
local counter, step = 0, {threads}
function setup(thread) thread:set("tid", threads_seen); threads_seen = threads_seen + 1 end
function init(args) counter = tid end
local non2xx = 0
function request()
  counter = counter + step
  local i = counter % #sigs
  local body = prefix .. string.format("{run}%09d", i) .. suffix
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json",
    ["X-Webhook-Signature"] = "sha256=" .. sigs[i + 1]}}, body)
end
""")
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds:.0f}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Load(
        requests=int(_match(r"(\d+) requests in", out).group(1)),
        seconds=_wrk_seconds(out),
        p50_ms=_wrk_ms(out, "50%"),
        p99_ms=_wrk_ms(out, "99%"),
        non_2xx=int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
        errors=sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)),
        tool="wrk",
    )


def _match(pattern: str, out: str) -> re.Match[str]:
    found = re.search(pattern, out)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{out}")
    return found


def _wrk_seconds(out: str) -> float:
    value, unit = _match(r"requests in ([\d.]+)(m?s|m)", out).groups()
    return float(value) * {"s": 1, "ms": 0.001, "m": 60}[unit]


def _wrk_ms(out: str, label: str) -> float:
    value, unit = _match(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


async def _python(
    url: str, sigs: Path, prefix: str, suffix: str, run: str, connections: int, seconds: float
) -> Load:
    import httpx

    signatures = sigs.read_text().split()
    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0, "next": 0}
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            i = counts["next"] % len(signatures)
            counts["next"] += 1
            body = f"{prefix}{media_id(run, i)}{suffix}".encode()
            started = time.perf_counter()
            try:
                answer = await client.post(
                    url,
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-Webhook-Signature": "sha256=" + signatures[i],
                    },
                )
                if not answer.is_success:
                    counts["non_2xx"] += 1
            except httpx.HTTPError:
                counts["errors"] += 1
            latencies.append((time.perf_counter() - started) * 1000)

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(connections)))
    latencies.sort()
    return Load(
        requests=len(latencies),
        seconds=time.monotonic() - started,
        p50_ms=latencies[len(latencies) // 2],
        p99_ms=latencies[int(len(latencies) * 0.99)],
        non_2xx=counts["non_2xx"],
        errors=counts["errors"],
        tool="python (httpx)",
    )
