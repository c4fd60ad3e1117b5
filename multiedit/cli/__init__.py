"""The ``multiedit`` command line: a thin layer over library functions.

Each verb lives in its own module in this package and defines ``register(subparsers)``, which adds
its sub-parser and sets ``func`` (a callable taking the parsed namespace and returning an exit
code). Verbs are discovered at start-up, so adding one never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from ..errors import MultiEditError, brief


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="multiedit",
        description="Multi-task instruction-based image editing (Emu Edit on InstructPix2Pix).",
    )
    parser.add_argument("--version", action="version", version=f"multiedit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what was typed: a check can tell an option given at its default value from one left out
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet_libraries(args.verbose)
    try:
        return int(args.func(args) or 0)
    except MultiEditError as exc:
        print(f"multiedit {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the checks could not foresee (permissions, a full disk, /proc), or the network
        if type(exc).__module__.split(".")[0] in NETWORK_MODULES:
            print(f"multiedit {args.verb}: error: could not reach a server ({brief(exc)}); pass local folders for "
                  "models and data, or check the connection (and HF_HUB_OFFLINE).", file=sys.stderr)
            return 1
        print(f"multiedit {args.verb}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"multiedit {args.verb}: interrupted; finished work is kept, rerun to resume.", file=sys.stderr)
        return 130


#: Libraries whose OSError subclasses are network failures (requests' ConnectionError, HfHubHTTPError, ...).
NETWORK_MODULES = {"requests", "urllib3", "huggingface_hub", "httpx", "httpcore", "aiohttp"}


def describe_os_error(exc: OSError) -> str:
    """One sentence for an operating-system error: what failed on which path, and what to check."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        return f"{brief(exc)}; check the paths given and the free disk space."
    what = exc.strerror or type(exc).__name__
    return f"{what}: {' -> '.join(paths)}; check that the path exists, is of the right kind and is writable."


def _quiet_libraries(verbose: bool) -> None:
    """Loading bars and advisory warnings of diffusers/transformers would bury our own messages."""
    import os

    if verbose:
        return
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notices about their configs
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read at import: the torchvision fallback notice
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    logging.getLogger("accelerate").setLevel(logging.WARNING)
    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    if "datasets" in sys.modules:  # imported already (in-process callers): the env var came too late
        sys.modules["datasets"].disable_progress_bars()


def entry_point() -> None:  # console script
    sys.exit(main())
