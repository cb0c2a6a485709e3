"""Worker processes that stop when the run stops: on an interrupt or a termination the
pending jobs are cancelled and the workers terminated (their tool runs with them), not
waited for; a worker's SIGTERM becomes an exception, so the tools it started are killed
on the way out (``subprocess.run`` kills its child when interrupted)."""
from __future__ import annotations

import contextlib
import multiprocessing
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
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers


@contextlib.contextmanager
def process_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context process pool of ``jobs`` workers; leaving it by an exception
    cancels what has not started and terminates the workers (SIGTERM, then SIGKILL after
    5 s) instead of waiting for their jobs."""
    ex = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_start)
    try:
        yield ex
    except BaseException:
        workers = list((getattr(ex, "_processes", None) or {}).values())  # (the executor keeps no public list)
        ex.shutdown(wait=False, cancel_futures=True)
        for p in workers:
            if p.is_alive():
                p.terminate()
        for p in workers:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(1)
        raise
    ex.shutdown(wait=True)
