"""Atomic writes: nothing is half-written. Write to a temporary sibling, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb"):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary file keeps ``path``'s suffix, so writers that infer a format from the
    extension (PIL, pyarrow) still work. On error the temporary file is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False):
    """Yield a temporary directory next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_output_path(path: str | Path, flag: str = "--out", kind: str = "file") -> Path:
    """Fail fast, before any work, when ``path`` cannot receive a ``kind`` ("file" or "folder") output.

    A folder output may not exist yet (its missing parents are created later); a file output's folder must exist.
    The check writes and removes a temporary file where the output will go, so permissions, read-only and
    pseudo file systems (/proc) are all caught. Raises MultiEditError naming ``flag`` and the path.
    """
    from .errors import MultiEditError

    path = Path(path).expanduser()
    if kind == "file" and path.is_dir():
        raise MultiEditError(f"{flag} {path} is a folder; pass a file path such as {path / 'out.png'}.")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise MultiEditError(f"{flag} {path} is a file; pass a folder path (it is created if missing).")
    if kind == "file":
        where = path.parent
        if not where.is_dir():
            raise MultiEditError(f"The output folder {where} of {flag} {path} does not exist; create it or choose "
                                 f"another {flag}.")
    else:
        where = path if path.is_dir() else path.parent
        while not where.exists():
            where = where.parent
        if not where.is_dir():
            raise MultiEditError(f"{flag} {path} lies under {where}, which is a file; choose another {flag}.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check-", dir=where)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise MultiEditError(f"Cannot write {flag} {path} ({exc.strerror or exc}); choose a writable location.") from None
    return path


def looks_local(source: str | Path) -> bool:
    """True when ``source`` can only mean a local path, never a Hugging Face hub id ("name" or "org/name"):
    it exists, starts with ``.``, ``/`` or ``~``, ends with a slash, or has more than one slash. A missing local
    path then fails at once, without a round of hub retries."""
    text = str(source)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.endswith(("/", os.sep)):
        return True
    return text.count("/") > 1
