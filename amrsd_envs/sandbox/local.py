"""The local sandbox backend: a warm zygote inside bubblewrap, ``unshare`` namespaces or plain rlimits.

Isolation is chosen at construction, strongest first, and recorded in ``sandbox.isolation``:

BWRAP (bubblewrap present and user namespaces allowed)
    One long-lived ``bwrap`` with new user, pid, net, ipc and uts namespaces (and cgroup where the
    kernel allows), a new session, ``--die-with-parent``, a read-only root holding only read-only binds
    of /usr, /lib, /lib64, /bin and /etc (symlinks are recreated as symlinks), a fresh /proc, a minimal
    /dev, tmpfs /tmp and /dev/shm, and a cleared environment (PATH, HOME, LANG only). Inside it the
    zygote (:mod:`amrsd_envs.sandbox.zygote`) keeps spare call chains ready; each chain's
    supervisor enters *per-call* user/mount/pid/ipc namespaces: each call has its own empty tmpfs
    /tmp as working directory, its own /dev/shm and /proc, sees none of the zygote's or other calls'
    processes, has every capability dropped and ``no_new_privs`` set, and all its processes die with
    its pid 1 when it ends or times out.
NAMESPACES (``unshare`` from util-linux)
    The same, except that the host filesystem stays visible (read with the sandbox user's rights; a
    private /tmp per call hides the host's /tmp). The zygote is pid 1 of its namespace.
RLIMITS (always available)
    A plain subprocess. Calls are separate processes in their own session and working directory,
    killed with all their descendants (the supervisor is a child subreaper) on exit or timeout; no
    network or filesystem isolation. When the host runs as root the zygote stays root and each call
    switches to ``run_as_uid`` (default 65534, nobody).

When the host runs as root, the BWRAP and NAMESPACES sandboxes are started as ``run_as_uid``: the
sandboxed code is never host root, so read-only binds cannot be remounted writable to any effect.

Every level applies per call: RLIMIT_AS (``memory_mb``), RLIMIT_CPU (timeout + 1 s), RLIMIT_FSIZE
(``fsize_mb``), RLIMIT_CORE = 0, RLIMIT_NPROC (``pids``; counted per call under per-call namespaces,
per host user at RLIMITS), a wall-clock timeout enforced inside by the supervisor and, as a backstop,
by the host, which restarts a zygote that stops answering. Output is captured through pipes and cut at
``max_output_bytes`` per stream (the program keeps running; the rest is discarded).

What it does not guarantee: the zygote's Python is the interpreter the code runs in, so the CPython
version and the modules importable are the host's (add ``ro_binds`` for more); calls share the
zygote's hash seed; a program can misreport its *own* exit status (it holds the pipe on which it
says "done", which saves waiting for its exit); CPU time is not shared fairly between concurrent
calls beyond the kernel's scheduler; at RLIMITS a program can signal other processes of its uid
(including other sandboxes running as ``run_as_uid``).

Speed: the interpreter and the standard library are loaded once, and each call's process chain is
forked, namespaced and locked down *before* its request exists. The zygote hands the host the pipes
of each ready chain, so a call is: host writes the request to the waiting user process, the program
runs, its supervisor writes the result to the host (see docs/BENCHMARKS.md against a plain
``python -I -S -c``). ``warm=False`` keeps a one-shot mode: a fresh isolated interpreter per call.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path

from amrsd_envs.sandbox.base import (
    DEFAULT_FSIZE_MB,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MEMORY_MB,
    DEFAULT_PIDS,
    DEFAULT_TIMEOUT_S,
    ExecResult,
    IsolationLevel,
    SandboxError,
    check_code,
    check_positive_int,
    check_timeout,
    encode_files,
    encode_stdin,
)
from amrsd_envs.sandbox.channel import (
    BACKSTOP_GRACE_S,
    CANCEL_GRACE_S,
    ZygoteChannel,
    died_result,
    result_from_message,
    wedged_result,
)
from amrsd_envs.sandbox.zygote import BOOTSTRAP, HEADER, encode_frame

ZYGOTE_SOURCE = (Path(__file__).with_name("zygote.py")).read_text(encoding="utf-8")
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/etc")
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
LOCAL_LEVELS = (IsolationLevel.BWRAP, IsolationLevel.NAMESPACES, IsolationLevel.RLIMITS)


def default_python() -> str:
    """The interpreter the sandbox runs: the system ``/usr/bin/python3`` when present."""
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return sys.executable


@dataclasses.dataclass
class _Spare:
    """The host's handles on one prepared call chain: pipes to its supervisor and user process."""

    pid: int  # the supervisor's pid inside the sandbox (names it in cancel messages)
    control: int  # write end: deadline and output cap, to the supervisor
    go: int  # write end: the request, to the waiting user process
    result: int  # read end: the supervisor's result frame

    def close(self) -> None:
        for fd in (self.control, self.go, self.result):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.control = self.go = self.result = -1


class _ZygoteProcess:
    """One started zygote: the host process (bwrap / unshare / python), its channels and stderr log.

    The zygote runs in *direct* mode: over a Unix socket it hands the host the pipes of each spare
    call chain, so a call goes host -> user process -> supervisor -> host and never through the
    zygote, whose stdin only asks for replacements ("took"), cancels and clean-ups.
    """

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: str, user: int | None, name: str, zygote_end: socket.socket
    ) -> None:
        kwargs: dict = {}
        if user is not None:
            kwargs.update(user=user, group=user, extra_groups=[])
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            close_fds=True,
            pass_fds=[zygote_end.fileno()],
            start_new_session=True,  # terminal signals to the host do not reach the sandbox
            **kwargs,
        )
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name=f"{name}-stderr", daemon=True)
        self._stderr_thread.start()
        stdin_fd = self.proc.stdin.fileno()
        stdout_fd = self.proc.stdout.fileno()

        def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(stdin_fd, view) :]

        self.channel = ZygoteChannel(write, lambda n: os.read(stdout_fd, n), name)
        self.hello: dict = {}
        self._spares: socket.socket | None = None
        self._spare_lock = threading.Lock()

    def _drain_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    def diagnostics(self) -> str:
        code = self.proc.poll()
        tail = " | ".join(list(self.stderr_tail)[-8:])
        return f"exit status {code}; stderr: {tail or '(empty)'}"

    def start(self, host_end: socket.socket, timeout_s: float) -> dict:
        self._spares = host_end
        try:
            self.hello = self.channel.wait_hello(timeout_s, self.diagnostics)
        except SandboxError:
            self.stop()
            raise
        return self.hello

    def take_spare(self, timeout_s: float, replace: bool = True) -> _Spare | None:
        """The next prepared call chain (waits for the zygote to fork one); None if it is gone.

        ``replace`` asks the zygote to fork a replacement (not wanted by a one-shot sandbox).
        """
        with self._spare_lock:
            if self._spares is None:
                return None
            self._spares.settimeout(timeout_s)
            try:
                message, fds, _, _ = socket.recv_fds(self._spares, 1024, 3)
            except OSError:  # timeouts included
                return None
        if not message or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return None
        if replace:
            try:
                self.channel.send({"op": "took"})  # the zygote forks a replacement meanwhile
            except OSError:
                pass
        return _Spare(json.loads(message)["spare"], *fds)

    def exited_within(self, seconds: float) -> bool:
        """Whether the sandbox's host process has exited, waiting at most ``seconds`` for it."""
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return not self.channel.alive
        return True

    def stop(self, grace_s: float = 2.0) -> None:
        """Close the zygote's input (it kills its calls and exits), then kill what is left."""
        _stop_process(self.proc, grace_s)
        with self._spare_lock:
            if self._spares is not None:
                self._spares.close()
                self._spares = None


def _stop_process(proc: subprocess.Popen, grace_s: float) -> None:
    try:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        try:
            if stream:
                stream.close()
        except OSError:
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_frame_until(fd: int, deadline: float, buffer: bytearray) -> str:
    """Read one frame into ``buffer`` until ``deadline``: "frame", "eof" or "timeout"."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        if len(buffer) >= HEADER.size and HEADER.unpack(buffer[: HEADER.size])[0] == len(buffer) - HEADER.size:
            return "frame"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        if not poller.poll(int(remaining * 1000) + 1):
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return "eof"
        buffer += chunk


class LocalSandbox:
    """Runs Python code in a local isolated zygote (see the module docstring for the guarantees).

    Args:
        require: the weakest isolation accepted; construction raises SandboxError below it.
        isolation: force one level instead of the strongest available (e.g. to test a fallback).
        warm: keep one zygote for all calls (fast); False starts a fresh sandbox per call.
        timeout_s, memory_mb: defaults for :meth:`run` (10 s, 512 MB).
        pids: processes one call may have (RLIMIT_NPROC), default 64.
        max_output_bytes: cap per stream (stdout, stderr), default 64 KiB.
        fsize_mb: largest file a call may write (RLIMIT_FSIZE), default 64 MB.
        tmpfs_mb: size of a call's private /tmp and /dev/shm under per-call namespaces.
        spares: call chains the zygote keeps prepared (default 6): the one a call takes was forked
            that many calls earlier, so it is ready; raise it above 3x the number of concurrent callers.
        python: interpreter inside the sandbox (default /usr/bin/python3).
        preload: extra modules the zygote imports once (e.g. ``["sympy"]`` when importable inside).
        ro_binds: extra host paths bound read-only at the same path (BWRAP level).
        run_as_uid: host uid the sandbox runs as when the host process is root (default 65534).
        start_timeout_s: how long a zygote may take to report ready.
    """

    backend = "local"

    def __init__(
        self,
        *,
        require: IsolationLevel | int = IsolationLevel.NONE,
        isolation: IsolationLevel | int | None = None,
        warm: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_mb: int = DEFAULT_MEMORY_MB,
        pids: int = DEFAULT_PIDS,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        fsize_mb: int = DEFAULT_FSIZE_MB,
        tmpfs_mb: int = 256,
        spares: int = 6,
        python: str | None = None,
        preload: tuple[str, ...] | list[str] = (),
        ro_binds: tuple[str, ...] | list[str] = (),
        run_as_uid: int = 65534,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.timeout_s = check_timeout(timeout_s)
        self.memory_mb = check_positive_int(memory_mb, "memory_mb", 16)
        self.pids = check_positive_int(pids, "pids")
        self.max_output_bytes = check_positive_int(max_output_bytes, "max_output_bytes")
        self.fsize_mb = check_positive_int(fsize_mb, "fsize_mb")
        self.tmpfs_mb = check_positive_int(tmpfs_mb, "tmpfs_mb")
        self.spares = check_positive_int(spares, "spares")
        self.start_timeout_s = check_timeout(start_timeout_s, "start_timeout_s")
        self.warm = bool(warm)
        self.python = python or default_python()
        if not os.path.exists(self.python):
            raise SandboxError(f"python interpreter {self.python!r} does not exist; pass python=<path>")
        self.preload = list(preload)
        self.ro_binds = [str(p) for p in ro_binds]
        for path in self.ro_binds:
            if not os.path.isabs(path):
                raise ValueError(f"ro_binds entry {path!r} must be an absolute host path")
        self.run_as_uid = check_positive_int(run_as_uid, "run_as_uid", 0)
        self.instance_id = f"amrsd-sbx-{uuid.uuid4().hex[:12]}"
        self._as_root = os.geteuid() == 0
        self._base_dir = tempfile.mkdtemp(prefix=f"{self.instance_id}-")
        if self._as_root:
            # The sandbox runs as run_as_uid: it makes its call directories here (RLIMITS level).
            os.chown(self._base_dir, self.run_as_uid, self.run_as_uid)
        self._lock = threading.Lock()
        self._res = _Resources(self._base_dir)
        self._closed = False
        # A sandbox dropped without close() still frees its processes and scratch directory.
        self._finalizer = weakref.finalize(self, self._res.release)

        require = IsolationLevel(require)
        if isolation is not None:
            candidates = [IsolationLevel(isolation)]
            if candidates[0] not in LOCAL_LEVELS:
                raise ValueError(
                    f"isolation={candidates[0].name} is not a local level; valid: {[lv.name for lv in LOCAL_LEVELS]}"
                )
        else:
            candidates = [level for level in LOCAL_LEVELS if level >= require]
        failures: list[str] = []
        self.isolation = IsolationLevel.NONE
        for level in candidates:
            if level < require:
                failures.append(f"{level.name}: weaker than require={require.name}")
                continue
            reason = self._unavailable(level)
            if reason:
                failures.append(f"{level.name}: {reason}")
                continue
            try:
                zygote = self._spawn(level, spares=self.spares if self.warm else 1)
            except (SandboxError, OSError) as exc:
                failures.append(f"{level.name}: {exc}")
                continue
            self.isolation = level
            self.per_call_namespaces = bool(zygote.hello.get("per_call_ns"))
            self.sandbox_python = zygote.hello.get("python", "")
            if self.warm:
                self._res.zygote = zygote
            else:
                zygote.stop()
            break
        else:
            self.close()
            raise SandboxError(
                f"no local isolation at or above {require.name} could start; tried: " + "; ".join(failures)
            )

    # ------------------------------------------------------------------ launching
    def _unavailable(self, level: IsolationLevel) -> str:
        if level is IsolationLevel.BWRAP and shutil.which("bwrap") is None:
            return "bwrap not installed (apt-get install bubblewrap)"
        if level is IsolationLevel.NAMESPACES and shutil.which("unshare") is None:
            return "unshare not installed (util-linux)"
        return ""

    def _zygote_config(self, level: IsolationLevel, spares: int, fd_socket: int) -> dict:
        config = {
            "instance": self.instance_id,  # also a marker in argv: lets tests find every process of it
            "per_call_ns": level >= IsolationLevel.NAMESPACES,
            "tmpfs_mb": self.tmpfs_mb,
            "env": {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"},
            "preload": self.preload,
            "base_dir": "/tmp" if level is IsolationLevel.BWRAP else self._base_dir,
            "spares": spares,
            "fd_socket": fd_socket,
        }
        if level is IsolationLevel.RLIMITS and self._as_root:
            config["drop_uid"] = [self.run_as_uid, self.run_as_uid]
        return config

    def _argv(self, level: IsolationLevel, config: dict) -> list[str]:
        program = [self.python, "-I", "-c", BOOTSTRAP, ZYGOTE_SOURCE, json.dumps(config)]
        if level is IsolationLevel.BWRAP:
            return [shutil.which("bwrap") or "bwrap", *self._bwrap_options(), "--", *program]
        if level is IsolationLevel.NAMESPACES:
            return [
                shutil.which("unshare") or "unshare",
                "--user", "--map-root-user", "--pid", "--fork", "--kill-child",
                "--net", "--ipc", "--uts", "--mount", "--mount-proc", "--propagation", "private",
                "--", *program,
            ]  # fmt: skip
        return program

    def _bwrap_options(self) -> list[str]:
        options = [
            "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--new-session", "--die-with-parent", "--hostname", "sandbox",
        ]  # fmt: skip
        binds = list(SYSTEM_DIRS) + self.ro_binds
        real_python = os.path.realpath(self.python)
        if not any(real_python.startswith(os.path.realpath(p) + os.sep) for p in binds):
            # An interpreter outside the system dirs (e.g. pyenv) needs its install prefix visible.
            binds.append(os.path.dirname(os.path.dirname(real_python)))
        for path in binds:
            if os.path.islink(path):
                options += ["--symlink", os.readlink(path), path]
            elif os.path.exists(path):
                options += ["--ro-bind", path, path]
        options += [
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp",
            "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv",
            "--setenv", "PATH", SANDBOX_PATH, "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
        ]  # fmt: skip
        return options

    def _spawn(self, level: IsolationLevel, spares: int) -> _ZygoteProcess:
        host_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            config = self._zygote_config(level, spares, zygote_end.fileno())
            user = self.run_as_uid if self._as_root and level >= IsolationLevel.NAMESPACES else None
            env = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "HOME": self._base_dir}
            cwd = self._base_dir if level is not IsolationLevel.BWRAP else "/"
            name = f"{self.instance_id}-{level.name}"
            zygote = _ZygoteProcess(self._argv(level, config), env, cwd, user, name, zygote_end)
        except BaseException:
            host_end.close()
            raise
        finally:
            zygote_end.close()  # the zygote holds its own copy
        zygote.start(host_end, self.start_timeout_s)
        return zygote

    # ------------------------------------------------------------------ running
    def run(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        files: dict[str, str | bytes] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        """Run ``code`` like ``python -c`` in a fresh working directory holding ``files``.

        Thread-safe: concurrent calls run in parallel in the same zygote. Never raises for what the
        code does (crash, timeout, memory, output flood); raises ValueError/TypeError for bad
        arguments and SandboxError if the sandbox is closed or cannot be restarted.
        """
        timeout = check_timeout(self.timeout_s if timeout_s is None else timeout_s)
        memory = check_positive_int(self.memory_mb if memory_mb is None else memory_mb, "memory_mb", 16)
        request = {
            "op": "run",
            "code": check_code(code),
            "files": encode_files(files),
            "stdin": encode_stdin(stdin),
            "timeout_s": timeout,
            "memory_mb": memory,
            "nproc": self.pids,
            "fsize_mb": self.fsize_mb,
            "max_output_bytes": self.max_output_bytes,
        }
        if not self.warm:
            if self._closed:
                raise SandboxError("sandbox is closed")
            zygote = self._spawn(self.isolation, spares=1)
            try:
                result = self._call(zygote, request, timeout, restart=lambda: None)
            finally:
                zygote.stop()
            return result if result is not None else died_result(time.monotonic(), zygote.diagnostics())
        for _ in range(3):
            zygote = self._current()
            result = self._call(zygote, request, timeout, restart=lambda: self._restart(zygote))
            if result is not None:
                return result
            # The chain was dead before it got the request (its zygote died): a fresh one runs it.
            self._restart(zygote)
        return died_result(time.monotonic(), "the sandbox could not be restarted")

    def _call(self, zygote: _ZygoteProcess, request: dict, timeout: float, restart) -> ExecResult | None:
        """One call on a spare chain, with a host backstop behind the in-sandbox deadline.

        Returns None when the chain turned out dead before the request reached it (safe to retry).
        """
        spare = zygote.take_spare(self.start_timeout_s, replace=self.warm)
        if spare is None:
            return None
        started = time.monotonic()
        try:
            # The supervisor's clock starts first, so the deadline covers all of the program's run.
            control = {"id": spare.pid, "timeout_s": timeout, "max_output_bytes": self.max_output_bytes}
            try:
                _write_all(spare.control, encode_frame(control))
                _write_all(spare.go, encode_frame({**request, "id": spare.pid}))
            except OSError:
                return None  # nobody read it: the code did not run
            os.close(spare.go)
            os.close(spare.control)
            spare.go = spare.control = -1
            buffer = bytearray()
            outcome = _read_frame_until(spare.result, started + timeout + BACKSTOP_GRACE_S, buffer)
            if outcome == "timeout":
                try:
                    zygote.channel.send({"op": "cancel", "spare": spare.pid})
                except OSError:
                    pass
                outcome = _read_frame_until(spare.result, time.monotonic() + CANCEL_GRACE_S, buffer)
                if outcome != "frame":
                    if outcome == "timeout":
                        restart()  # even the cancel went unanswered: replace the whole sandbox
                    return wedged_result(started)
            if outcome == "eof":
                if zygote.exited_within(0.2):
                    restart()  # the whole sandbox went (killed from outside): a fresh one for the next call
                    return died_result(started, f"the sandbox was killed: {zygote.diagnostics()}")
                try:
                    zygote.channel.send({"op": "cleanup"})
                except OSError:
                    restart()
                return died_result(started, "its supervisor was killed")
            return result_from_message(json.loads(bytes(buffer[HEADER.size :]).decode("utf-8")))
        finally:
            spare.close()

    def _current(self) -> _ZygoteProcess:
        with self._lock:
            if self._closed:
                raise SandboxError("sandbox is closed")
            current = self._res.zygote
            if current is None or not current.channel.alive or current.proc.poll() is not None:
                if current is not None:
                    current.stop(grace_s=0.5)
                self._res.zygote = current = self._spawn(self.isolation, spares=self.spares)
            return current

    def _restart(self, broken: _ZygoteProcess) -> None:
        """Replace a zygote that died or stopped answering (killing all that ran inside it)."""
        with self._lock:
            if self._res.zygote is broken:
                self._res.zygote = None
        broken.stop(grace_s=0.5)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the zygote and every call in it; remove the host scratch directory. Idempotent."""
        with self._lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalSandbox(isolation={self.isolation.name}, warm={self.warm}, id={self.instance_id})"


class _Resources:
    """What a LocalSandbox must free: kept apart from it so a finalizer can free it after collection."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.zygote: _ZygoteProcess | None = None

    def release(self) -> None:
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            zygote.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
