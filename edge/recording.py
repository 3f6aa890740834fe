"""What the device knows about a recording before it decodes it: when it started (from its file
name, a ``--start`` flag, or its modification time — and which one was used), and whether its
container says it was cut short (a truncated OGG decodes without any error: libsndfile reports the
length it finds, so the last Ogg page is checked for the end-of-stream flag; a WAV's ``data`` chunk
declares its size).
"""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge.errors import InputError
from edge.records import StartBasis

#: ``SITE_YYYYMMDD_HHMMSS`` (BirdCLEF soundscapes, e.g. ``H02_20230420_074000``) or
#: ``YYYYMMDD_HHMMSS`` (AudioMoth, e.g. ``20230420_074000``)
FILE_NAME_TIME = re.compile(r"^(?:(?P<site>.+?)_)?(?P<date>\d{8})_(?P<time>\d{6})$")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            f"unknown time zone {name!r} (use an IANA name such as America/Bogota or UTC)"
        ) from None


def time_from_name(path: Path | str, tz: str = "UTC") -> datetime | None:
    """The recording's start encoded in its file name (in the recorder's time zone ``tz``), or None."""
    m = FILE_NAME_TIME.match(Path(path).stem)
    if m is None:
        return None
    try:
        t = datetime.strptime(m["date"] + m["time"], "%Y%m%d%H%M%S")
    except ValueError:  # 20231345_990000: digits, but not a time
        return None
    return t.replace(tzinfo=zone(tz))


def parse_start(text: str, tz: str = "UTC") -> datetime:
    """A ``--start`` value: ISO 8601 (``2023-04-20T07:40:00``, with or without an offset; without one
    it is in the recorder's time zone)."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--start {text!r} is not an ISO 8601 time such as 2023-04-20T07:40:00") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=zone(tz))


def recording_start(
    path: Path | str, start: datetime | None = None, tz: str = "UTC"
) -> tuple[datetime, StartBasis]:
    """When a recording began and where that came from: ``start`` (the flag), else the file name,
    else the file's modification time."""
    if start is not None:
        return start, StartBasis.FLAG
    named = time_from_name(path, tz)
    if named is not None:
        return named, StartBasis.FILE_NAME
    return datetime.fromtimestamp(Path(path).stat().st_mtime, UTC), StartBasis.MTIME


def container_problem(path: Path | str) -> str | None:
    """A reason to believe the file was cut short, from its container alone; None when it looks whole
    (or its format keeps no such record)."""
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(12)
        size = p.stat().st_size
        if head[:4] == b"OggS":
            return _ogg_problem(fh, size)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _wav_problem(fh, size)
    return None


def _ogg_problem(fh: BinaryIO, size: int) -> str | None:
    tail_len = min(size, 1 << 16)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"OggS")
    while pos >= 0 and (len(tail) - pos < 27 or tail[pos + 4] != 0):  # stream structure version 0
        pos = tail.rfind(b"OggS", 0, pos)
    if pos < 0:
        return "no Ogg page found near the end of the file (truncated)"
    header_type = tail[pos + 5]
    n_segments = tail[pos + 26]
    lacing = tail[pos + 27 : pos + 27 + n_segments]
    page_end = pos + 27 + n_segments + sum(lacing)
    if len(lacing) < n_segments or page_end > len(tail):
        return "the file ends inside an Ogg page (truncated)"
    if not header_type & 0x04:
        return "the Ogg stream has no end-of-stream page (truncated)"
    return None


def _wav_problem(fh: BinaryIO, size: int) -> str | None:
    fh.seek(12)
    offset = 12
    while offset + 8 <= size:
        hdr = fh.read(8)
        if len(hdr) < 8:
            return None
        cid, n = hdr[:4], struct.unpack("<I", hdr[4:])[0]
        if cid == b"data":
            if n in (0, 0xFFFFFFFF):  # a streaming writer that never filled in the size
                return None
            missing = offset + 8 + n - size
            if missing > 0:
                return f"the WAV header declares {n} bytes of audio, the file holds {n - missing} (truncated)"
            return None
        offset += 8 + n + (n & 1)
        fh.seek(offset)
    return None
