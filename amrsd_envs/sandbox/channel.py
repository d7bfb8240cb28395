"""Host end of one zygote: sends request frames, demultiplexes result frames to waiting callers.

Transport-agnostic: the local backend gives it a subprocess's pipes, the docker backend a demultiplexed
attach socket. One reader thread per zygote; any number of caller threads may wait at once.
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from typing import Callable

from amrsd_envs.sandbox.base import ExecResult, SandboxError
from amrsd_envs.sandbox.zygote import HEADER, MAX_FRAME_BYTES, encode_frame

#: Stands for "the zygote went away before answering" in a pending slot.
DIED = object()


class _Pending:
    """One request awaiting its result frame."""

    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: object = None


class ZygoteChannel:
    """Frames to and from one zygote over a byte stream.

    Args:
        write: sends bytes to the zygote's standard input (called under a lock).
        read: returns up to ``n`` bytes of the zygote's protocol output; ``b""`` at end of stream.
        name: a label for error messages.
    """

    def __init__(self, write: Callable[[bytes], None], read: Callable[[int], bytes], name: str) -> None:
        self._write = write
        self._read = read
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._hello = _Pending()
        self._alive = True
        self.log: collections.deque[str] = collections.deque(maxlen=64)
        self._buffer = bytearray()
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._alive

    def wait_hello(self, timeout_s: float, diagnostics: Callable[[], str] = lambda: "") -> dict:
        """Block until the zygote reports ready; SandboxError with diagnostics if it does not."""
        if not self._hello.event.wait(timeout_s):
            raise SandboxError(f"{self.name}: sandbox did not start within {timeout_s:.0f}s. {diagnostics()}")
        if self._hello.message is DIED:
            raise SandboxError(f"{self.name}: sandbox exited during start-up. {diagnostics()}")
        return self._hello.message  # type: ignore[return-value]

    def submit(self, request: dict) -> tuple[int, _Pending]:
        """Send a run request (an ``id`` is assigned); returns the id and its pending slot."""
        request_id = next(self._ids)
        slot = _Pending()
        with self._lock:
            if not self._alive:
                slot.message = DIED
                slot.event.set()
                return request_id, slot
            self._pending[request_id] = slot
        try:
            self._send({**request, "op": "run", "id": request_id})
        except OSError:
            self._mark_dead()
        return request_id, slot

    def send(self, message: dict) -> None:
        """Send one control frame to the zygote (raises OSError if it is gone)."""
        self._send(message)

    def cancel(self, request_id: int) -> None:
        """Ask the zygote to kill one call (the host-side backstop behind the in-sandbox deadline)."""
        try:
            self._send({"op": "cancel", "id": request_id})
        except OSError:
            self._mark_dead()

    def forget(self, request_id: int) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def _send(self, message: dict) -> None:
        frame = encode_frame(message)
        with self._write_lock:
            self._write(frame)

    def _read_loop(self) -> None:
        try:
            while True:
                message = self._next_frame()
                if message is None:
                    break
                if message.get("op") == "hello":
                    self._hello.message = message
                    self._hello.event.set()
                    continue
                with self._lock:
                    slot = self._pending.pop(message.get("id"), None)
                if slot is not None:
                    slot.message = message
                    slot.event.set()
        except (OSError, ValueError) as exc:
            self.log.append(f"reader stopped: {type(exc).__name__}: {exc}")
        finally:
            self._mark_dead()

    def _next_frame(self) -> dict | None:
        header = self._take(HEADER.size)
        if header is None:
            return None
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME_BYTES:
            raise ValueError(f"frame of {size} bytes from {self.name} exceeds {MAX_FRAME_BYTES}")
        body = self._take(size)
        if body is None:
            return None
        return json.loads(body.decode("utf-8"))

    def _take(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            chunk = self._read(max(size - len(self._buffer), 1 << 16))
            if not chunk:
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _mark_dead(self) -> None:
        with self._lock:
            self._alive = False
            pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.message = DIED
            slot.event.set()
        if not self._hello.event.is_set():
            self._hello.message = DIED
            self._hello.event.set()


def died_result(started: float, detail: str) -> ExecResult:
    """The result of a call whose sandbox process went away before answering."""
    return ExecResult(
        stdout="",
        stderr=f"sandbox process died during the call ({detail}); it is restarted for the next call",
        exit_code=-9,
        timed_out=False,
        duration_s=time.monotonic() - started,
        truncated=False,
    )


def wedged_result(started: float) -> ExecResult:
    """The result of a call whose sandbox stopped answering past its deadline and was restarted."""
    return ExecResult(
        stdout="",
        stderr="sandbox did not answer after the timeout; every process of it was killed and it is restarted",
        exit_code=-9,
        timed_out=True,
        duration_s=time.monotonic() - started,
        truncated=False,
    )


def result_from_message(message: dict) -> ExecResult:
    return ExecResult(
        stdout=message["stdout"],
        stderr=message["stderr"],
        exit_code=int(message["exit_code"]),
        timed_out=bool(message["timed_out"]),
        duration_s=float(message["duration_s"]),
        truncated=bool(message["truncated"]),
    )


#: Seconds past a call's timeout before the host stops trusting the in-sandbox deadline: the supervisor
#: kills at the deadline and then drains output for at most 2 s.
BACKSTOP_GRACE_S = 5.0
#: Seconds to wait for the answer to a cancel before the whole zygote is restarted.
CANCEL_GRACE_S = 2.0


def call_with_backstop(
    channel: ZygoteChannel, request: dict, timeout_s: float, restart: Callable[[], None]
) -> ExecResult:
    """Run one request and return its result; never raises for anything the code does.

    The zygote's supervisor enforces the deadline itself. If no answer arrives ``BACKSTOP_GRACE_S``
    after it, the host asks for a cancel; if that goes unanswered too, ``restart`` replaces the zygote
    (killing everything inside it) and the call counts as timed out.
    """
    started = time.monotonic()
    request_id, slot = channel.submit(request)
    if not slot.event.wait(timeout_s + BACKSTOP_GRACE_S):
        channel.cancel(request_id)
        if not slot.event.wait(CANCEL_GRACE_S):
            channel.forget(request_id)
            restart()
            return wedged_result(started)
    if slot.message is DIED:
        restart()
        return died_result(started, "; ".join(list(channel.log)[-3:]) or "no diagnostics")
    return result_from_message(slot.message)  # type: ignore[arg-type]
