"""Run directories of the reference trainer: file names, exclusive claims, locks and atomic writes.

A run directory belongs to one run (:func:`claim_run_dir`); while a run works in it, it holds a lock on it
(:func:`lock_run_dir`). Files are written with the permissions a plain ``open()`` gives (``0o666`` less the umask).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

__all__ = [
    "OutputDirError",
    "RunDirLock",
    "atomic_write_bytes",
    "claim_run_dir",
    "check_output_dir",
    "exclusive_write_bytes",
    "lock_run_dir",
    "remove_stale_temporaries",
    "check_name_lengths",
    "name_too_long",
    "shorten_path",
]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
ASSIGNMENTS_NAME = "assignments.csv"
#: Files the trainer replaces atomically; their interrupted temporaries are ``.<name>.<random>.tmp``.
ATOMIC_NAMES = (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, ASSIGNMENTS_NAME)
#: Numbered suffixes tried for a default run directory name taken by another run.
_MAX_SUFFIX = 1000


class OutputDirError(ValueError):
    """An output directory that would overwrite (or mix with) another run."""


def _temporary(path: Path, data: bytes) -> str:
    """A fsynced temporary copy of ``data`` next to ``path`` with the permissions of ``open()``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; open() would honour the umask
                mask = os.umask(0o022)  # os.umask can only be read by setting it; set it straight back
                os.umask(mask)
                os.fchmod(fh.fileno(), 0o666 & ~mask)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _quietly(os.unlink, tmp_name)
        raise
    return tmp_name


def _quietly(remove: Callable[[str], None], path: str | os.PathLike) -> None:
    try:
        remove(os.fspath(path))
    except OSError:
        pass


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames and new names in ``path`` durable (where the platform can open a directory)."""
    try:
        dir_fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    A reader (or a crash) sees either the old file or the complete new one.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     atomic_write_bytes(pathlib.Path(tmp) / "a.txt", b"hello")
        ...     (pathlib.Path(tmp) / "a.txt").read_bytes()
        b'hello'
    """
    path = Path(path)
    tmp_name = None
    try:
        tmp_name = _temporary(path, data)
        os.replace(tmp_name, path)
    except BaseException as exc:
        if tmp_name is not None:
            _quietly(os.unlink, tmp_name)
        # Name the file being written, not its temporary: "... : 'run/checkpoint.pt'".
        if isinstance(exc, OSError) and (
            exc.filename is None or os.path.basename(os.fspath(exc.filename)).startswith(f".{path.name}.")
        ):
            exc.filename, exc.filename2 = str(path), None
        raise
    fsync_dir(path.parent)


def exclusive_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Create ``path`` holding ``data``, complete or not at all; ``FileExistsError`` if it exists.

    ``os.link`` of a fsynced temporary (an ``O_EXCL`` create where there are no hard links).
    """
    path = Path(path)
    tmp_name = _temporary(path, data)
    try:
        os.link(tmp_name, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FAT file systems)
        with open(path, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        _quietly(os.unlink, tmp_name)
    fsync_dir(path.parent)


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Delete the temporaries of atomic writes that a kill interrupted (call it holding the directory's lock)."""
    for name in ATOMIC_NAMES:
        for path in Path(run_dir).glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)


def check_output_dir(path: str | os.PathLike, *, default_name: bool = False) -> None:
    """Refuse an output directory that cannot be a new run's, before anything is read or written.

    Args:
        path: the directory wanted.
        default_name: ``path`` is a default name, which :func:`claim_run_dir`
            replaces by a numbered one when taken: only where it would be created is checked.

    Raises:
        OutputDirError: ``path`` is a file, a non-empty directory, lies under
            a file, or its nearest existing parent is not writable.
    """
    path = Path(path)
    if default_name:
        path = path.parent / f".{path.name}.check"  # a name that stands for any free sibling
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output directory {str(path)!r} exists and is not a directory")
    if path.is_dir():
        if any(path.iterdir()):
            raise OutputDirError(
                f"output directory {str(path)!r} is not empty; choose a new --output-dir or continue it with "
                f"--resume {path}"
            )
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputDirError(f"cannot create output directory {str(path)!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"cannot create output directory {str(path)!r}: {str(parent)!r} is not writable")


class RunDirLock:
    """An advisory exclusive ``flock`` on a run directory (a no-op where ``fcntl`` is missing).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with lock_run_dir(tmp):
        ...         try:
        ...             lock_run_dir(tmp)
        ...         except OutputDirError:
        ...             print("in use")
        in use
    """

    def __init__(self, fd: Optional[int]) -> None:
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_dir(path: str | os.PathLike) -> RunDirLock:
    """Lock the run directory ``path`` for this process.

    Raises:
        OutputDirError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory directory locks
        return RunDirLock(None)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise OutputDirError(f"cannot open run directory {str(path)!r}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputDirError(f"run directory {str(path)!r} is in use by another propos-train process") from None
    except OSError:  # a file system without flock (some network mounts): run unlocked
        pass
    return RunDirLock(fd)


def claim_run_dir(
    path: str | os.PathLike, config_json: Callable[[Path], bytes], *, exclusive_name: bool
) -> Tuple[Path, RunDirLock]:
    """Create the run directory ``path`` (or, for a default name, ``path-2``, ``path-3``, ...) with its config.

    ``os.mkdir``, a lock and :func:`exclusive_write_bytes` of ``config.json``: of two processes claiming
    one name exactly one succeeds. A name the user chose may also be an existing *empty* directory.

    Args:
        path: the directory wanted.
        config_json: the content of ``config.json`` for the directory claimed.
        exclusive_name: ``True`` for a name the user chose (taken = error);
            ``False`` for a default name (taken = try the next suffix).

    Returns:
        The directory claimed and this process's lock on it (release it when the run ends).

    Raises:
        OutputDirError: an explicit name that is taken, or the directory cannot be created.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     first, lock1 = claim_run_dir(pathlib.Path(tmp) / "run", lambda path: b"{}", exclusive_name=False)
        ...     second, lock2 = claim_run_dir(pathlib.Path(tmp) / "run", lambda path: b"{}", exclusive_name=False)
        ...     lock1.release(); lock2.release()
        ...     print(first.name, second.name)
        run run-2
    """
    path = Path(path)
    taken = f"output directory {str(path)!r} was taken by another run; choose a new --output-dir"
    for attempt in range(1, _MAX_SUFFIX + 1):
        candidate = path if attempt == 1 else path.with_name(f"{path.name}-{attempt}")
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            created = _mkdir_new(candidate)
        except OSError as exc:
            raise OutputDirError(f"cannot create output directory {str(candidate)!r}: {exc.strerror or exc}") from None
        # An existing empty directory counts as taken for a default name (another run may have just made it).
        lock = None
        if created or (created is False and exclusive_name):
            try:
                lock = lock_run_dir(candidate)
            except OutputDirError:
                pass
        if lock is not None:
            try:
                exclusive_write_bytes(candidate / CONFIG_NAME, config_json(candidate))
                return candidate, lock
            except FileExistsError:
                lock.release()
            except BaseException as exc:  # disk full, a signal: leave no empty directory behind
                lock.release()
                if created:
                    _quietly(os.rmdir, candidate)
                if isinstance(exc, OSError):
                    raise OutputDirError(
                        f"cannot write {str(candidate / CONFIG_NAME)!r}: {exc.strerror or exc}"
                    ) from None
                raise
        if exclusive_name:  # taken
            raise OutputDirError(taken)
    raise OutputDirError(f"no free run directory name {str(path)!r}-2 .. -{_MAX_SUFFIX}")


def _mkdir_new(path: Path) -> Optional[bool]:
    """``True``: created; ``False``: an existing empty directory; ``None``: the name is taken."""
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        return False if path.is_dir() and not any(path.iterdir()) else None


def check_name_lengths(paths: Sequence[tuple[str, Optional[str]]]) -> None:
    """Refuse a path of a flag with a name longer than the file system allows, naming the flag.

    Raises:
        OutputDirError: ``os.stat`` of a path fails with ``ENAMETOOLONG``.
    """
    for flag, value in paths:
        if value is None:
            continue
        try:
            os.stat(value)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise OutputDirError(f"{flag}: {name_too_long(value)}") from None
        except ValueError:  # an embedded NUL: left to the code that uses the path
            pass


def name_too_long(path: str | os.PathLike) -> str:
    """Which part of ``path`` is too long, without printing hundreds of characters."""
    longest = max(Path(path).parts or (str(path),), key=lambda part: len(os.fsencode(part)))
    shown = longest if len(longest) <= 40 else longest[:20] + "..." + longest[-10:]
    return (
        f"the name {shown!r} in {shorten_path(path)!r} is {len(os.fsencode(longest))} bytes long, longer than the "
        f"file system allows (usually 255); choose a shorter path"
    )


def shorten_path(path: str | os.PathLike, limit: int = 120) -> str:
    """``path`` as text, its middle elided when longer than ``limit`` characters (for one-line messages)."""
    text = str(path)
    return text if len(text) <= limit else text[: limit // 2] + "..." + text[-limit // 4 :]
