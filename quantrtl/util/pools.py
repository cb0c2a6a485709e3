"""Worker processes that stop when the run stops: on an interrupt or a termination the
pending jobs are cancelled and the workers terminated with every tool they started, not
waited for. Each worker leads its own process group, so its tools (``make`` and the
compilers under it) are signalled as one group: a worker's SIGTERM becomes an exception
(its Python clean-up runs), then whatever is left of the group is killed. A Ctrl-C
reaches only the parent, which stops the groups; nothing a worker started outlives the run."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

__all__ = ["Terminated", "process_pool", "terminating"]


class Terminated(BaseException):
    """SIGTERM, as an exception (the command line exits 143)."""


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def terminating() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while inside (main thread only; restored after)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _worker_start() -> None:
    os.setpgrp()  # the worker and its tools: one group, signalled together by the parent
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers


def _run_job(fn, args, kwargs):
    """A job in a worker; a SIGTERM ends the worker once the job's clean-up has run (the
    executor would otherwise report the job failed and take the next one)."""
    try:
        return fn(*args, **kwargs)
    except Terminated:
        os._exit(143)


class _StoppablePool(ProcessPoolExecutor):
    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_run_job, fn, args, kwargs)


def _signal_group(pgid: int, signum: int) -> None:
    """Signal the process group ``pgid`` (nothing when no process of it is left)."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_workers(workers, grace: float = 5.0) -> None:
    """SIGTERM to each worker's group, SIGKILL to what is left after ``grace`` seconds."""
    import time

    groups = [p.pid for p in workers if p.pid is not None]
    for g in groups:
        _signal_group(g, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
    for g in groups:  # a worker gone may leave a tool of its group (a compiler under make)
        _signal_group(g, signal.SIGKILL)
    for p in workers:  # a worker still starting has no group of its own yet: kill it by its pid
        if _running(p):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    for p in workers:  # a killed process is gone once the kernel has freed it (slow on a loaded machine)
        while _running(p) and time.monotonic() < deadline:
            p.join(0.1)


def _running(p) -> bool:
    """``p`` has not ended, by its pid: the executor's own thread may reap a worker first, and
    ``Process.is_alive()`` then never learns of it."""
    if p.exitcode is not None or p.pid is None:
        return False
    try:
        os.kill(p.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{p.pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has ended
    except OSError:
        return False


@contextlib.contextmanager
def process_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context process pool of ``jobs`` workers; leaving it by an exception
    cancels what has not started and stops the workers' process groups (SIGTERM, then
    SIGKILL after 5 s) instead of waiting for their jobs."""
    ex = _StoppablePool(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_start)
    try:
        yield ex
    except BaseException:
        workers = list((getattr(ex, "_processes", None) or {}).values())  # (the executor keeps no public list)
        ex.shutdown(wait=False, cancel_futures=True)
        _stop_workers(workers)
        raise
    ex.shutdown(wait=True)
