"""A small pool of long-lived worker processes that run Math-Verify comparisons under a hard timeout.

Why processes: Math-Verify's own timeout uses ``signal.alarm``, which works only on the main thread of the main
interpreter and cannot interrupt a long C-level computation (sympy building ``10**(10**10)`` is one big-int
power). Here each comparison runs in a worker process with Math-Verify's timeouts off; the caller waits on a pipe
for at most ``timeout_s`` and, past it, kills the worker (SIGKILL) and starts a replacement at once. A pathological
answer costs one timeout, never a hang, and callers may be on any thread.

Why plain subprocesses rather than a ``multiprocessing`` forkserver/spawn context: those re-import the parent's
``__main__`` in every worker, so a training script without an ``if __name__ == "__main__":`` guard would make every
worker die on start and every math answer silently score 0. A worker here is a fresh interpreter (spawn semantics:
no fork of a threaded parent) running ``_math_worker.py``, which imports only Math-Verify. Workers start lazily, are
started from one long-lived thread (so Linux's parent-death signal only fires when the process ends), cache parsed
golds (an LRU per worker) and cap their address space (``memory_mb``) so a runaway comparison fails with
``MemoryError`` instead of starving the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CompareStatus = Literal["equal", "not_equal", "gold_unparsed", "answer_unparsed", "timeout", "worker_died", "error"]

WORKER_SCRIPT = Path(__file__).with_name("_math_worker.py")
# Generous: a worker imports sympy and Math-Verify (about a second, more on a busy 2-core machine).
WORKER_START_TIMEOUT_S = 120.0
# Runs the worker script by path with the caller's sys.path, without importing amrsd_envs.
_BOOT = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


@dataclass(frozen=True)
class CompareResult:
    """The outcome of one gold/answer comparison. ``detail`` is for logs only (it may quote the gold); ``pick`` is
    the string Math-Verify extracted from the answer (``""`` when none, or when the comparison did not finish)."""

    status: CompareStatus
    detail: str = ""
    seconds: float = 0.0
    pick: str = ""


class _Worker:
    """One worker process and the two pipe ends the parent holds."""

    def __init__(self, memory_mb: int | None) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        cmd = [sys.executable, "-c", _BOOT, str(WORKER_SCRIPT), str(req_r), str(rep_w), str(memory_mb or 0)]
        cmd.append(str(os.getpid()))
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL, env=env)
        except BaseException:
            for fd in (req_r, req_w, rep_r, rep_w):
                os.close(fd)
            raise
        finally:
            # The child holds its own copies; closing ours makes EOF visible when either side goes away.
            for fd in (req_r, rep_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.requests = Connection(req_w, readable=False)
        self.replies = Connection(rep_r, writable=False)
        self.ready = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float) -> bool:
        if not self.ready and self.replies.poll(timeout_s):
            try:
                msg = self.replies.recv()
            except (EOFError, OSError):
                return False
            self.ready = isinstance(msg, tuple) and len(msg) == 2 and msg[0] == "ready"
        return self.ready

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("Math-Verify worker %s did not exit after SIGKILL", self.proc.pid)
        for conn in (self.requests, self.replies):
            with contextlib.suppress(OSError):
                conn.close()


class MathWorkerPool:
    """Up to ``size`` worker processes; ``compare`` borrows one, and kills and replaces it on timeout.

    Thread-safe: concurrent callers each get their own worker (callers beyond ``size`` wait for a free one).
    ``started`` and ``killed`` count worker starts and kills over the pool's life.
    """

    def __init__(self, size: int | None = None, *, memory_mb: int | None = 2048):
        if size is not None and size < 1:
            raise ValueError(f"MathWorkerPool size must be >= 1, got {size}")
        if memory_mb is not None and memory_mb < 512:
            raise ValueError(
                f"memory_mb must be >= 512 (Python + sympy need ~300 MB of address space) or None, got {memory_mb}"
            )
        self.size = size or max(1, min(4, os.cpu_count() or 1))
        self.memory_mb = memory_mb
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._live = 0
        self._closed = False
        self._spawner: ThreadPoolExecutor | None = None
        self.started = 0
        self.killed = 0

    def _spawn(self) -> _Worker:
        with self._lock:
            if self._spawner is None:
                self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amrsd-math-spawner")
            spawner = self._spawner
        worker = spawner.submit(_Worker, self.memory_mb).result()
        with self._lock:
            self.started += 1
        return worker

    def _acquire(self) -> _Worker:
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("MathWorkerPool is closed; create a new one (configure_pool)")
                try:
                    worker: _Worker | None = self._idle.get_nowait()
                except queue.Empty:
                    worker = None
                    spawn = self._live < self.size
                    if spawn:
                        self._live += 1
            if worker is not None:
                if worker.alive():
                    return worker
                self._discard(worker, replace=True)  # died while idle (e.g. killed from outside)
                continue
            if spawn:
                try:
                    return self._spawn()
                except BaseException:
                    with self._lock:
                        self._live -= 1
                    raise
            try:
                worker = self._idle.get(timeout=1.0)
            except queue.Empty:
                continue  # re-check: closed, or a slot freed by a discarded worker
            if worker.alive():
                return worker
            self._discard(worker, replace=True)

    def _discard(self, worker: _Worker, *, replace: bool) -> None:
        """Kill ``worker``; with ``replace``, start its successor now so the next comparison finds it warm."""
        worker.kill()
        with self._lock:
            self.killed += 1
            replace = replace and not self._closed
            if not replace:
                self._live -= 1
        if replace:
            try:
                fresh = self._spawn()
            except Exception as exc:
                log.warning("could not start a replacement Math-Verify worker: %s", exc)
                with self._lock:
                    self._live -= 1
                return
            self._idle.put(fresh)

    def compare(
        self,
        gold: str,
        answer: str,
        *,
        timeout_s: float,
        float_rounding: int = 6,
        numeric_precision: int = 15,
        strict: bool = True,
    ) -> CompareResult:
        """Math-Verify ``verify(parse(gold), parse(answer))`` in a worker, within ``timeout_s`` seconds.

        ``gold`` and ``answer`` are the strings Math-Verify parses with its default extraction configs (callers
        wrap a bare LaTeX answer in ``$...$``, or pass a whole model response and let Math-Verify find the answer).
        The timeout covers the comparison only; a worker still starting gets ``WORKER_START_TIMEOUT_S`` first.
        """
        worker = self._acquire()
        if not worker.wait_ready(WORKER_START_TIMEOUT_S):
            self._discard(worker, replace=True)
            return CompareResult("worker_died", "the worker did not start")
        t0 = time.monotonic()
        try:
            worker.requests.send((gold, answer, float_rounding, numeric_precision, strict))
            if not worker.replies.poll(timeout_s):
                self._discard(worker, replace=True)
                return CompareResult("timeout", f"no result within {timeout_s} s", time.monotonic() - t0)
            reply = worker.replies.recv()
        except (EOFError, OSError) as exc:
            self._discard(worker, replace=True)
            return CompareResult("worker_died", f"{type(exc).__name__}: {exc}", time.monotonic() - t0)
        except BaseException:
            # KeyboardInterrupt mid-request: the worker may still be busy, so it is not reused.
            self._discard(worker, replace=False)
            raise
        if self._closed:
            self._discard(worker, replace=False)
        else:
            self._idle.put(worker)
        status, detail, pick = (*reply, "")[:3]  # (status, detail[, pick])
        return CompareResult(status, detail, time.monotonic() - t0, pick)

    def worker_pids(self) -> list[int]:
        """Process ids of the idle workers (for tests and diagnostics)."""
        with self._idle.mutex:
            return [w.proc.pid for w in self._idle.queue]

    def close(self) -> None:
        """Kill the idle workers and refuse new comparisons (busy ones are killed when their comparison ends)."""
        with self._lock:
            self._closed = True
            spawner, self._spawner = self._spawner, None
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            self._discard(worker, replace=False)
        if spawner is not None:
            spawner.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"MathWorkerPool(size={self.size}, live={self._live}, started={self.started}, killed={self.killed})"


_pool: MathWorkerPool | None = None
_pool_lock = threading.Lock()


def get_pool() -> MathWorkerPool:
    """The process-wide pool, created on first use (no process starts before the first comparison)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = MathWorkerPool()
        return _pool


def configure_pool(size: int | None = None, *, memory_mb: int | None = 2048) -> MathWorkerPool:
    """Replace the process-wide pool (closing the old one) with ``size`` workers of ``memory_mb`` each."""
    global _pool
    new = MathWorkerPool(size, memory_mb=memory_mb)
    with _pool_lock:
        old, _pool = _pool, new
    if old is not None:
        old.close()
    return new


def shutdown_pool() -> None:
    """Close the process-wide pool, if any (also registered with ``atexit``)."""
    global _pool
    with _pool_lock:
        old, _pool = _pool, None
    if old is not None:
        old.close()


atexit.register(shutdown_pool)
