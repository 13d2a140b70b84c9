"""Advisory per-directory locks, so that several processes can share one run directory.

A :class:`DirLock` is an ``flock`` on a small ``.lock`` file: the operating system releases it
when its process ends, however it ends, so a crashed job never leaves a stale lock behind. The
file itself stays (it holds the last holder's host and pid, for messages) and is harmless.
Where ``fcntl`` is unavailable (Windows) locking is a no-op: processes there must not share a
run directory except through disjoint ``--shard``s.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class DirLock:
    """Non-blocking exclusive lock on ``directory / name``.

    ``acquire()`` returns ``True`` when this process now holds the lock, ``False`` when another
    process (or another ``DirLock`` object of this process) holds it; :meth:`holder` then
    describes the holder. Use as ``with lock:`` only after a successful ``acquire()``.
    """

    def __init__(self, directory: str | Path, name: str = ".lock") -> None:
        self.path = Path(directory) / name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held elsewhere (BlockingIOError), or not lockable here
                os.close(fd)
                return False
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def holder(self) -> str:
        """``"pid P on HOST since T"`` of the process that last took the lock, if recorded."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def __enter__(self) -> DirLock:
        if not self.acquire():
            raise RuntimeError(f"{self.path} is held by {self.holder()}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()
