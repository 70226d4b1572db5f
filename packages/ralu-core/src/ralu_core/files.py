"""Files written so that neither an interruption nor a hostile folder loses data: atomic writes, stale
partial files, writability probes, and a lock that keeps two runs out of one output folder.

Every file is written to a temporary name in its own folder, flushed to disk, and then renamed over
the target in one step (``os.replace`` is atomic on POSIX and Windows). A Ctrl-C or crash therefore
leaves either the complete new file or whatever was there before, never a truncated image.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ralu_core.errors import RaluError

PARTIAL = ".partial"
"""Suffix of the temporary files; their names are ``.<target name>.<pid>-<random>.partial``."""

_WRITER = re.compile(r"\.(\d+)(?:-[a-z0-9_]*)?\.partial$")
"""The writer's pid in a temporary file's name (also in the ``.<name>.<pid>.partial`` of earlier versions)."""


def write_atomically(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(file)` on a temporary file next to `path`, then move it into place.

    The temporary file is created exclusively under a random name (``mkstemp``: ``O_CREAT | O_EXCL``), so a
    file or link planted at a name guessed in advance is never written through; the pid in its name lets a
    later run tell a dead writer's leftovers from a live one's (`remove_stale_partials`)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=PARTIAL, dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_partials(folder: Path) -> int:
    """Delete the temporary files in `folder` that a writer killed mid-write left behind (its process is gone);
    those of running writers stay. Returns how many were removed."""
    removed = 0
    for candidate in folder.glob(f".*{PARTIAL}"):
        writer = _WRITER.search(candidate.name)
        if writer is None or _alive(int(writer.group(1))) or not (candidate.is_file() or candidate.is_symlink()):
            continue
        candidate.unlink(missing_ok=True)  # a link is removed itself, never its target
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def save_image_atomically(image: Any, path: Path) -> None:
    """Save a PIL image in the format its suffix names (``.png``, ``.jpg``, ``.webp`` ...)."""
    write_atomically(path, lambda handle: image.save(handle, format=image_format(path)))


def image_format(path: Path) -> str:
    """The PIL format for `path`'s suffix; a RaluError for a suffix PIL cannot write."""
    from PIL import Image

    extensions = Image.registered_extensions()
    fmt = extensions.get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        writable = sorted(
            e for e, f in extensions.items() if f in Image.SAVE and e in (".png", ".jpg", ".jpeg", ".webp")
        )
        raise RaluError(
            f"--out {path}: cannot write {path.suffix or 'files without a suffix'}; use {', '.join(writable)}"
        )
    return fmt


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output path that cannot be written: a missing folder that cannot be
    made, a file used as a folder, a folder given as the file, or a folder without write permission."""
    if path.is_dir():
        raise RaluError(f"--out {path}: is a folder; give a file name such as {path / 'image.png'}")
    folder = path.parent if str(path.parent) else Path(".")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RaluError(f"--out {path}: {existing} is a file, not a folder")
    try:
        probe_writing(existing)
    except OSError as exc:
        raise RaluError(f"--out {path}: cannot write in {existing} ({exc.strerror or exc})") from None


PROBE_BYTES = 256 * 1024
"""What a writability probe writes: more than an image of a small model, so that a full disk fails it."""


def probe_writing(folder: Path) -> None:
    """Write and sync `PROBE_BYTES` in `folder`, then delete them: the one reliable test (permissions,
    read-only and virtual file systems, root, a full disk, where an empty file can still be made)."""
    with tempfile.TemporaryFile(dir=folder, prefix=".ralu-probe-") as handle:
        handle.write(bytes(PROBE_BYTES))
        handle.flush()
        os.fsync(handle.fileno())


def lock_folder(root: Path, name: str, label: str) -> IO[str] | None:
    """Own `root` until the returned handle is closed or this process ends (an OS lock on `root / name`,
    released by the kernel however the process dies); a RaluError naming `label` (the option that gave the
    folder) where another process holds it. Where the platform has no `fcntl`, nothing is locked (None)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    path = root / name
    try:  # never through a link someone placed there
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise RaluError(f"{label} {root}: cannot open its lock file {path.name} ({exc.strerror or exc})") from None
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RaluError(
            f"{label} {root}: another ralu run is writing to this folder ({holder}); wait for it to end, "
            f"or give another {label}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle
