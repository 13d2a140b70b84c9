"""Advisory per-directory locks, so that several processes can share one run directory.

A :class:`DirLock` wraps :class:`filelock.FileLock` (an ``flock`` on POSIX, ``msvcrt`` locking on
Windows) on a small ``.lock`` file: the operating system releases it when its process ends,
however it ends, so a crashed job never leaves a stale lock behind. Beside it, ``.lock.holder``
records the current holder's host, pid and start time, only so that a process that is refused
can say who holds the directory; it is informative, never consulted for the locking itself.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from recprune.store.atomic import write_json


class DirLock:
    """Non-blocking exclusive lock on ``directory / name``.

    ``acquire()`` returns ``True`` when this process now holds the lock, ``False`` when another
    process (or another ``DirLock`` object of this process) holds it; :meth:`holder` then
    describes the holder. Use as ``with lock:`` only after a successful ``acquire()``, or
    directly, in which case a held lock raises ``RuntimeError`` naming its holder.
    """

    def __init__(self, directory: str | Path, name: str = ".lock") -> None:
        self.path = Path(directory) / name
        self.holder_path = self.path.with_name(self.path.name + ".holder")
        # thread_local=False: the lock belongs to the process, not to the thread that took it;
        # timeout=0: never wait, a busy directory is skipped, not queued for.
        self._lock = FileLock(self.path, timeout=0, thread_local=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> bool:
        if self._lock.is_locked:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            return False
        write_json(self.holder_path, {"host": socket.gethostname(), "pid": os.getpid(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

    def holder(self) -> str:
        """``"pid P on HOST since T"`` of the process that last took the lock, if recorded."""
        try:
            info = json.loads(self.holder_path.read_text())
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def __enter__(self) -> DirLock:
        if not self.acquire():
            raise RuntimeError(f"{self.path} is held by {self.holder()}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()
