"""One run at a time per run directory: ``<run_dir>/run.lock``, held with ``fcntl.flock`` for the whole run.

Two ``histokit reproduce`` into the same run directory would otherwise both train in full, overwrite each other's
artifacts and both publish. The lock file names its holder (pid, host, start time, command), so the second run is
refused with who holds it. ``flock`` is released by the kernel when its holder dies, however it dies (SIGKILL
included): a lock file left behind by a dead run is taken over, and the run says so. The file itself is never
deleted (deleting a lock file another process is about to lock is how two processes end up both "holding" it);
a run that ends normally empties it.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; the run goes unlocked (the kit targets Linux and macOS)
    fcntl = None

LOCK_NAME = "run.lock"


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


def describe_holder(info: dict) -> str:
    """``pid 4242 on host gpu01 since 2026-05-09 07:35:25 (histokit reproduce esvit)``."""
    if not info:
        return "a process that left no details"
    text = f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('started', '?')}"
    if info.get("command"):
        text += f" ({info['command']})"
    return text


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid) -> Optional[bool]:
    """Whether process ``pid`` runs on this host (None: cannot tell)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, ValueError, TypeError, OverflowError):
        return None
    return True


class RunLock:
    """``with RunLock(run_dir, label): ...``: exclusive use of ``run_dir`` (:class:`RunLocked` when another process
    holds it). ``say`` prints the one line a takeover of a stale lock deserves."""

    def __init__(self, run_dir: Path, what: str = "", say: Optional[Callable[[str], None]] = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.what = what
        self.say = say or (lambda text: print(f"[histokit] {text}", flush=True))
        self._fd: Optional[int] = None
        self.previous: dict = {}  # the holder recorded in the file when this process took the lock

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise OSError(exc.errno, f"{exc.strerror} (locking the run directory)", str(self.path)) \
                            from None
                    holder = _read(fd)
                    raise RunLocked(f"run directory {self.run_dir} is in use by {describe_holder(holder)} "
                                    f"(lock file {self.path}); wait for that run to end, or give this one another "
                                    "--run-dir") from None
            self.previous = _read(fd)
            if self.previous.get("pid") is not None:
                same_host = self.previous.get("host") == socket.gethostname()
                if fcntl is None and same_host and _alive(self.previous["pid"]) is not False:
                    raise RunLocked(f"run directory {self.run_dir} is in use by {describe_holder(self.previous)} "
                                    f"(lock file {self.path}); wait for that run to end, or give this one another "
                                    "--run-dir")
                self.say(f"took over the stale lock of a run that did not finish ({describe_holder(self.previous)}; "
                         f"it holds the lock no more): {self.path}")
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": self.what or " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me, sort_keys=True) + "\n").encode("utf-8"))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a run that ended leaves no holder behind, so the next one has nothing to take over
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
