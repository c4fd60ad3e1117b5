"""User-facing errors.

A :class:`MultiEditError` carries one sentence that names the file, field or value at fault and the
fix. The CLI prints it without a traceback and exits non-zero; library users can catch it.
"""


def brief(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` for quoting a library's error inside ours.

    Cut at a word (never mid-URL) when longer than ``limit``; an empty message gives the type alone.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text.rstrip('.')}" if text else type(exc).__name__


class MultiEditError(Exception):
    """An error caused by user input (a path, a flag, a file's content), not by a bug."""


class MissingDependencyError(MultiEditError):
    """An optional extra is not installed; the message gives the exact ``pip install`` line."""


def require(module: str, extra: str):
    """Import ``module`` or raise a :class:`MissingDependencyError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{module} is not installed; install it with `pip install 'multiedit[{extra}]'`."
        ) from exc
