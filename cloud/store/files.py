"""Clip audio on disk, content-addressed (``<root>/<sha256[:2]>/<sha256>.<ext>``); the store keeps
the metadata. Replicas share the directory (a shared volume): a clip is written to a unique
temporary name beside its destination, flushed, and renamed, so concurrent writers of the same clip
never collide and a reader never sees half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cloud.errors import StoreError


class ClipFiles:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, sha256: str, ext: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.{ext}"

    def put(self, data: bytes, sha256: str, ext: str) -> Path:
        """Store ``data`` (whose sha256 the caller checked) unless an identical file is there."""
        path = self.path(sha256, ext)
        if path.is_file() and path.stat().st_size == len(data):
            return path
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha256[:16]}.", suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:  # a full disk, a read-only volume: nothing half-written stays
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise StoreError(f"cannot store clip {sha256[:12]}… under {self.root}: {exc}") from None
        return path
