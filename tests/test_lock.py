"""DirLock: exclusive between processes, and released by the system when its holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from recprune.store import DirLock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX-only")


def test_second_holder_is_refused_until_release(tmp_path):
    a, b = DirLock(tmp_path / "cell"), DirLock(tmp_path / "cell")
    assert a.acquire() and a.held
    assert not b.acquire() and not b.held
    assert f"pid {os.getpid()}" in b.holder()
    with pytest.raises(RuntimeError, match="held by pid"):
        with b:
            pass
    a.release()
    assert not a.held
    with b:
        assert b.held and not a.acquire()
    assert not b.held and a.acquire()
    a.release()


def test_lock_of_a_killed_process_is_free(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from recprune.store import DirLock
        lock = DirLock({str(tmp_path)!r})
        assert lock.acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        mine = DirLock(tmp_path)
        assert not mine.acquire()
        assert f"pid {proc.pid}" in mine.holder()
        proc.send_signal(signal.SIGKILL)  # no clean-up code runs
        proc.wait(timeout=30)
        assert mine.acquire()  # nothing stale is left behind
        assert f"pid {os.getpid()}" in mine.holder()
        mine.release()
    finally:
        proc.kill()
        proc.wait()
