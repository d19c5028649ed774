"""An exclusive, non-blocking lock on a directory, held for a process's lifetime (flock)."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


def try_lock(path: Path) -> int | None:
    """Open ``path`` and take an exclusive flock on it; its fd, or None if another holds it.

    The lock goes when the fd is closed or the process dies (kill -9 included), which is what
    tells a crashed owner from a live one.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd
