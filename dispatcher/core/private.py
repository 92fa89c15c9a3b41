"""Files and folders only their owner can read: the ledger, rejects and reports, the outbox, Redis' data.

Every one of them may hold receipt URLs or contacts. ``dispatcher`` commands set the umask to 077 at start,
but the Python API runs under whatever umask its script has (usually 022), so code that creates such a file
asks for the mode itself rather than trusting the umask.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from dispatcher.core.errors import ConfigError

#: The umask every ``dispatcher`` command runs under: new files 0600, new folders 0700.
PRIVATE_UMASK = 0o077
FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and any missing parents as 0700 folders; folders that exist are left as they are.

    ``Path.mkdir(parents=True, mode=...)`` gives the parents the umask's mode, hence our own walk.
    """
    folder = Path(path)
    if folder.is_dir():  # the common case (one stat per outbox message)
        return folder
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for part in reversed(missing):
        try:
            os.mkdir(part, DIR_MODE)
        except FileExistsError:
            continue  # another process made it first
    return folder


def tighten(path: str | os.PathLike[str], mode: int) -> None:
    """Give a file or folder of ours that already exists (made by an earlier version) the private mode."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if info.st_uid == os.geteuid() and not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(info.st_mode) & mode)


def create_private_file(path: str | os.PathLike[str]) -> None:
    """Make sure ``path`` exists as a 0600 file, so a library that opens it later (SQLite) keeps that mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    tighten(path, FILE_MODE)


def open_private_for_writing(path: str | os.PathLike[str]) -> int:
    """Open ``path`` truncated for writing, as a 0600 file; a symbolic link or non-file there is refused.

    Output paths come from the command line and sit in folders others may write to: following a link
    planted there would write personal data wherever the link points.
    """
    try:
        # O_NONBLOCK: a FIFO planted at the path fails at once instead of hanging the command.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path}: is a symbolic link; refusing to write through it") from None
        raise ConfigError(f"{path}: cannot write ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: not a regular file; refusing to write to it")
    os.set_blocking(fd, True)
    if stat.S_IMODE(info.st_mode) & ~FILE_MODE and info.st_uid == os.geteuid():
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its old mode through O_TRUNC
    return fd


def write_private_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) as a 0600 file."""
    fd = open_private_for_writing(path)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
