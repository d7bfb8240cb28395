"""The in-sandbox zygote: a warm Python process that keeps isolated call processes ready to run code.

This file is plain standard-library Python (3.8+) that runs *inside* the isolation (a bubblewrap or
``unshare`` namespace, a plain rlimited process, or a Docker container). The host passes its source
text on the interpreter's command line (see :data:`BOOTSTRAP`), so images need no copy of it and both
backends share this one implementation. The host-side package imports it only for the framing helpers.

Process tree of one call; the chain is forked *ahead* of any request (a "spare"), and the zygote
never runs user code itself::

    zygote Z  (long-lived; a little stdlib preloaded; forks spares; in direct mode never sees a request)
     └─ supervisor S  (trusted; enforces the deadline, reads the output pipes, reports one result;
         │             with per-call namespaces it is pid 1 of the call's own pid namespace)
         └─ user process U  (own session; locked down; waits for its request, then runs it in-process)

U locks itself down (new session, no_new_privs, capabilities dropped, uid dropped when Z is root) and
prepares a fresh ``python -c`` interpreter state (stdio, ``__main__``, random seed) before the request
exists, so a forked child never holds another request's data. On the request it writes the files
into its working directory, applies RLIMIT_AS/CPU/FSIZE/CORE/NPROC, and runs the code.

Per-call namespaces are used when the kernel allows them (inside bubblewrap and ``unshare``
sandboxes; not under Docker's default seccomp profile). The zygote first makes itself pid 1 of a new
pid namespace owned by a new user namespace, which lets it fork every supervisor straight into a
pid namespace of its own; the supervisor then makes new mount and ipc namespaces (fresh tmpfs /tmp,
the working directory, and /dev/shm; /proc remounted) and a user namespace of its own before forking
U. A call then sees only its own processes, cannot signal its pid-1 supervisor, and every process it
started dies when the supervisor exits. Without them S is a child subreaper that kills U's process
group and then every orphaned descendant, and the working directory is a fresh ``base_dir/call-PID``.

Two modes:
  *direct* (``fd_socket`` set; the local backend): Z sends each spare's three pipe ends (control to
  S, request to U, result from S) over a Unix socket to the host, which then runs the call itself:
  host -> U and S -> host, no hop through Z. Z's stdin carries ``{"op": "took"}`` (fork a
  replacement), ``{"op": "cancel", "spare": pid}`` and ``{"op": "cleanup"}``.
  *mediated* (Docker's attach stream, where fds cannot cross): run requests arrive on Z's stdin, Z
  hands each to a spare and forwards its result frame on stdout.

Wire protocol: frames of a 4-byte big-endian length followed by UTF-8 JSON.
  request: ``{"op": "run", "id": int, "code": str, "files": {path: base64}, "stdin": base64|null,
            "timeout_s": float, "memory_mb": int, "nproc": int|null, "fsize_mb": int,
            "max_output_bytes": int}``; control (to S): ``{"id", "timeout_s", "max_output_bytes"}``.
  result: ``{"op": "result", "id": int, "stdout": str, "stderr": str, "exit_code": int,
            "timed_out": bool, "duration_s": float, "truncated": bool}``.
  Z says ``{"op": "hello", ...capabilities}`` on stdout once its first spares exist.
End of input on Z's stdin makes it kill every call and spare and exit.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import select
import signal
import struct
import sys
import time

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 1024 * 1024

#: The ``-c`` program the host runs: ``python -I -c BOOTSTRAP <zygote source> <config json>``.
BOOTSTRAP = (
    "import sys;g={'__name__':'amrsd_zygote'};"
    "exec(compile(sys.argv[1],'<amrsd-zygote>','exec'),g);g['main'](sys.argv[2])"
)

# Linux ABI constants (include/uapi/linux/sched.h, mount.h, prctl.h, capability.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 36, 38, 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: Modules imported once in the zygote, so forked children find them loaded. Kept small on purpose:
#: forking and exiting cost grows with the zygote's memory (here about 0.5 ms at 8 MB, 1.4 ms at
#: 18 MB per fork), and every call forks twice. Code that imports more should pass ``preload=``.
DEFAULT_PRELOAD = (
    "atexit", "collections", "functools", "io", "itertools", "json", "math", "operator", "random",
    "resource", "threading", "types",
)  # fmt: skip

#: A larger preload for code that uses much of the standard library (``preload=STDLIB_PRELOAD``).
STDLIB_PRELOAD = (
    "abc", "argparse", "array", "base64", "bisect", "cmath", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "enum", "fractions", "hashlib", "heapq", "numbers", "re",
    "shutil", "statistics", "string", "tempfile", "textwrap", "traceback", "typing", "unicodedata",
)  # fmt: skip


def encode_frame(message: dict) -> bytes:
    """Serialise one protocol message as a length-prefixed JSON frame."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(body)) + body


def _read_exact(fd: int, size: int) -> bytes | None:
    """Read exactly ``size`` bytes from a blocking fd; None at end of input."""
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_raw_frame(fd: int) -> bytes | None:
    """Read one whole frame (header included) from a blocking fd; None at end of input."""
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    body = _read_exact(fd, size)
    if body is None:
        return None
    return header + body


def read_frame(fd: int) -> dict | None:
    """Read and decode one frame from a blocking fd; None at end of input."""
    frame = read_raw_frame(fd)
    return None if frame is None else json.loads(frame[HEADER.size :].decode("utf-8"))


def _frame_complete(data: bytes) -> bool:
    return len(data) >= HEADER.size and HEADER.unpack(data[: HEADER.size])[0] == len(data) - HEADER.size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Libc:
    """The few libc calls the standard library lacks, through ctypes (None-safe when ctypes is absent)."""

    def __init__(self) -> None:
        try:
            import ctypes

            self._ctypes = ctypes
            self._lib = ctypes.CDLL(None, use_errno=True)
        except (ImportError, OSError):
            self._ctypes = None
            self._lib = None

    @property
    def available(self) -> bool:
        return self._lib is not None

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            err = self._ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def prctl(self, option: int, arg: int = 0) -> int:
        if self._lib is None:
            return -1
        c_ulong = self._ctypes.c_ulong
        return self._lib.prctl(option, c_ulong(arg), c_ulong(0), c_ulong(0), c_ulong(0))

    def unshare(self, flags: int) -> None:
        self._check(self._lib.unshare(flags), "unshare")

    def setns(self, fd: int, nstype: int) -> None:
        self._check(self._lib.setns(fd, nstype), "setns")

    def mount(self, source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        c = self._ctypes
        self._check(
            self._lib.mount(
                source.encode(),
                target.encode(),
                fstype.encode() if fstype else None,
                c.c_ulong(flags),
                data.encode() if data else None,
            ),
            f"mount {target}",
        )

    def drop_capabilities(self) -> None:
        """Empty the effective, permitted, inheritable and ambient capability sets, and for uid 0
        the bounding set (execve gives uid 0 its bounding set; no other uid gains anything from it
        under no_new_privs)."""
        c = self._ctypes
        if os.getuid() == 0:
            for cap in range(64):
                if self.prctl(PR_CAPBSET_DROP, cap) != 0:
                    break  # EINVAL past the last capability this kernel knows
        self.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        header = (c.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
        data = (c.c_uint32 * 6)()
        self._check(self._lib.capset(header, data), "capset")


LIBC = _Libc()


class Zygote:
    """The warm process: keeps spare call chains ready and hands each request to one.

    Args (the JSON config passed as ``sys.argv[2]``):
        base_dir: where per-call working directories are made when per-call namespaces are off.
        per_call_ns: try per-call user/mount/pid/ipc namespaces (probed once at start).
        tmpfs_mb: size of each call's tmpfs ``/tmp`` and ``/dev/shm`` under per-call namespaces.
        wipe_dirs: directories whose *contents* are deleted after each call without namespaces
            (a container's writable tmpfs mounts; never a directory the host shares).
        drop_uid: ``[uid, gid]`` the user process switches to when the zygote runs as root.
        env: environment of the user process (HOME and TMPDIR are set to its working directory).
        preload: extra module names to import once (missing ones are reported, not fatal).
        spares: call chains kept ready (a supervisor in its namespaces, a waiting user process).
        fd_socket: in *direct* mode, a Unix socket fd on which each spare's pipes (control, request,
            result) are sent to the host, which then talks to the spare itself: a call never passes
            through the zygote. Without it (*mediated* mode, e.g. Docker's attach stream) requests
            and results travel through the zygote's stdin/stdout.
    """

    def __init__(self, config: dict) -> None:
        self.base_dir = config.get("base_dir", "/tmp")
        self.tmpfs_mb = int(config.get("tmpfs_mb", 256))
        self.wipe_dirs = list(config.get("wipe_dirs", []))
        self.drop_uid = config.get("drop_uid")
        self.env = dict(config.get("env", {}))
        self.preload = list(DEFAULT_PRELOAD) + list(config.get("preload", []))
        self.want_ns = bool(config.get("per_call_ns", True))
        self.spare_target = max(1, int(config.get("spares", 2)))
        self.fd_socket = None
        if config.get("fd_socket") is not None:
            import socket

            self.fd_socket = socket.socket(fileno=int(config["fd_socket"]))
        self.handed_out: set[int] = set()  # direct mode: supervisors whose pipes the host holds
        self.per_call_ns = False
        self.pidns_fd = -1
        self.ns_error = ""
        self.proto_in = -1
        self.proto_out = -1
        # Idle spare chains: [supervisor pid, control pipe write fd, user request pipe write fd, result read fd].
        self.spares: list[list[int]] = []
        # Calls in flight: result pipe read fd -> [request id, supervisor pid, received bytes].
        self.active: dict[int, list] = {}

    # ---------------------------------------------------------------- start-up
    def start(self) -> None:
        # The protocol moves off fds 0/1 so that nothing a child inherits can write into it.
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a dead supervisor come here to be killed
        LIBC.prctl(PR_SET_DUMPABLE, 0)  # same-uid code may not ptrace or read the zygote's memory
        loaded, failed = [], []
        for name in self.preload:
            try:
                __import__(name)
                loaded.append(name)
            except Exception as exc:  # a missing optional module must not stop the sandbox
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
        if self.want_ns:
            promoted, self.ns_error = self._promote()
            if promoted:
                self.per_call_ns, self.ns_error = self._probe_namespaces()
        gc.collect()
        if hasattr(gc, "freeze"):
            gc.freeze()  # keep preloaded objects out of later collections: fewer copy-on-write faults
        self._ensure_spares()
        self._send(
            {
                "op": "hello",
                "pid": os.getpid(),
                "uid": os.getuid(),
                "python": sys.version.split()[0],
                "executable": sys.executable,
                "per_call_ns": self.per_call_ns,
                "ns_error": self.ns_error,
                "drop_uid": self.drop_uid if os.geteuid() == 0 else None,
                "preloaded": loaded,
                "preload_failed": failed,
            }
        )

    def _promote(self) -> tuple[bool, str]:
        """Become pid 1 of a new pid namespace owned by a new user namespace.

        The zygote then holds the capabilities (in that user namespace only) to give every call
        chain a pid namespace of its own, whose pid 1 is the call's supervisor: one fork fewer per
        call than a separate init. The original process stays behind, only waiting for it.
        """
        if not LIBC.available:
            return False, "ctypes unavailable"
        uid, gid = os.getuid(), os.getgid()
        try:
            LIBC.prctl(PR_SET_DUMPABLE, 1)  # id maps are written through /proc/self
            LIBC.unshare(CLONE_NEWUSER | CLONE_NEWPID)
            _write_id_maps(uid, gid)
        except OSError as exc:
            LIBC.prctl(PR_SET_DUMPABLE, 0)
            return False, f"{type(exc).__name__}: {exc}"
        pid = os.fork()
        if pid != 0:
            for fd in (self.proto_in, self.proto_out, 0, 1):
                os.close(fd)
            if self.fd_socket is not None:
                self.fd_socket.close()
            _, status = os.waitpid(pid, 0)
            os._exit(_exit_code(status) & 0xFF)
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1: no signal from inside may reach it
        try:
            LIBC.unshare(CLONE_NEWNS)
            LIBC.mount("none", "/", None, MS_REC | MS_PRIVATE, None)
            LIBC.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
            self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            LIBC.prctl(PR_SET_DUMPABLE, 0)
        return True, ""

    def _probe_namespaces(self) -> tuple[bool, str]:
        """Try a call chain's namespace set-up once, in a throwaway child (never in the zygote)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                LIBC.unshare(CLONE_NEWPID)
                child = os.fork()
                if child == 0:
                    try:
                        _enter_call_namespaces(self.tmpfs_mb)
                        os._exit(0)
                    finally:
                        os._exit(1)
                _, status = os.waitpid(child, 0)
                LIBC.setns(self.pidns_fd, CLONE_NEWPID)
                if status != 0:
                    raise OSError(0, f"per-call namespace set-up failed (status {status})")
                os.write(w, b"ok")
            except BaseException as exc:  # report any failure, never run on in the child
                os.write(w, f"{type(exc).__name__}: {exc}".encode()[:500])
            os._exit(0)
        os.close(w)
        message = b""
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            message += chunk
        os.close(r)
        os.waitpid(pid, 0)
        text = message.decode("utf-8", "replace")
        return text == "ok", "" if text == "ok" else text

    # ---------------------------------------------------------------- main loop
    def serve(self) -> None:
        if self.fd_socket is not None:
            self._serve_direct()
            return
        poller = select.poll()
        poller.register(self.proto_in, select.POLLIN)
        while True:
            for fd, _ in poller.poll(1000 if self.active else None):
                if fd == self.proto_in:
                    frame = read_raw_frame(self.proto_in)
                    if frame is None:
                        self.shutdown()
                        return
                    new_fd = self._handle(frame)
                    del frame  # no request data stays referenced when the next spare is forked
                    if new_fd is not None:
                        poller.register(new_fd, select.POLLIN)
                elif fd in self.active:
                    chunk = os.read(fd, 1 << 20)
                    entry = self.active[fd]
                    entry[2] += chunk
                    if not chunk or _frame_complete(entry[2]):
                        poller.unregister(fd)
                        self._finish(fd)
            self._reap()
            if not self.active:
                # Replenish between calls, not during one: a fork here would delay forwarding a result.
                self._ensure_spares()

    def _handle(self, frame: bytes) -> int | None:
        request = json.loads(frame[HEADER.size :].decode("utf-8"))
        control = {
            "id": request.get("id"),
            "timeout_s": request.get("timeout_s"),
            "max_output_bytes": request.get("max_output_bytes"),
        }
        op = request.get("op")
        del request
        if op == "cancel":
            for rid, pid, _ in self.active.values():
                if rid == control["id"]:
                    _kill(pid)  # its init / user process die with it (parent-death signal)
            return None
        if op != "run":
            return None
        while True:
            if not self.spares:
                try:
                    self._fork_spare()
                except OSError as exc:
                    self._send(_error_result(control["id"], f"sandbox could not start a process: {exc}"))
                    return None
            pid, control_w, go_w, result_r = self.spares.pop(0)
            try:
                # The supervisor gets the deadline and output cap (its clock starts first), the
                # waiting user process the request itself.
                _write_all(control_w, encode_frame(control))
                _write_all(go_w, frame)
            except OSError:  # the spare died while idle: drop it, take another
                for fd in (control_w, go_w, result_r):
                    os.close(fd)
                _kill(pid)
                continue
            os.close(control_w)
            os.close(go_w)
            self.active[result_r] = [control["id"], pid, b""]
            return result_r

    def _serve_direct(self) -> None:
        """Direct mode: stdin carries only "took" (fork a replacement), "cancel" and "cleanup"."""
        poller = select.poll()
        poller.register(self.proto_in, select.POLLIN)
        owed = 0  # replacements asked for but not forked yet (a fork fails while a call has all pids)
        while True:
            while owed:
                try:
                    self._fork_spare()
                except OSError:
                    break
                owed -= 1
            if poller.poll(50 if owed else 1000):
                request = read_frame(self.proto_in)
                if request is None:
                    self.shutdown()
                    return
                op = request.get("op")
                if op == "took":
                    owed += 1
                elif op == "cancel":
                    if request.get("spare") in self.handed_out:
                        _kill(int(request["spare"]))
                elif op == "cleanup":
                    self._kill_strays()
                    for directory in self.wipe_dirs:
                        _wipe(directory)
            self._reap()

    def _ensure_spares(self) -> None:
        """Fork spares up to the target; a failed fork (no pids left right now) is retried later."""
        wanted = self.spare_target if self.fd_socket is not None else self.spare_target - len(self.spares)
        for _ in range(wanted):
            try:
                self._fork_spare()
            except OSError:
                return

    def _fork_spare(self) -> None:
        control_r, control_w = os.pipe()
        go_r, go_w = os.pipe()
        result_r, result_w = os.pipe()
        if self.per_call_ns:
            LIBC.unshare(CLONE_NEWPID)  # the next child is pid 1 of a fresh pid namespace
        pid = -1
        try:
            pid = os.fork()
        except OSError:
            for fd in (control_r, control_w, go_r, go_w, result_r, result_w):
                os.close(fd)
            raise
        finally:
            if self.per_call_ns and pid != 0:
                LIBC.setns(self.pidns_fd, CLONE_NEWPID)  # back, so the next unshare works
        if pid == 0:
            try:
                for fd in (control_w, go_w, result_r, self.proto_in, self.proto_out, *self.active):
                    os.close(fd)
                if self.fd_socket is not None:
                    self.fd_socket.close()
                for spare in self.spares:
                    for fd in spare[1:]:
                        os.close(fd)
                self.active.clear()
                self.spares.clear()
                Supervisor(self, control_r, go_r, result_w).run()
            finally:
                os._exit(0)
        for fd in (control_r, go_r, result_w):
            os.close(fd)
        if self.fd_socket is None:
            self.spares.append([pid, control_w, go_w, result_r])
            return
        import socket

        try:
            socket.send_fds(self.fd_socket, [json.dumps({"spare": pid}).encode()], [control_w, go_w, result_r])
            self.handed_out.add(pid)
        except OSError:
            _kill(pid)  # the host is gone; shutdown follows on end of input
        for fd in (control_w, go_w, result_r):
            os.close(fd)

    def _finish(self, fd: int) -> None:
        rid, _, data = self.active.pop(fd)
        os.close(fd)
        if _frame_complete(data):
            _write_all(self.proto_out, data)  # the supervisor's complete frame, forwarded as is
            if len(self.spares) < self.spare_target:
                try:
                    self._fork_spare()  # after forwarding, so the fork does not delay this result
                except OSError:
                    pass  # retried between calls
            return
        self._kill_strays()
        if not self.active:
            # The supervisor could not clean up after its call; nothing may outlive a call.
            for directory in self.wipe_dirs:
                _wipe(directory)
        self._send(_error_result(rid, "sandbox supervisor died before reporting (killed from inside?)"))

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.handed_out.discard(pid)
            for spare in self.spares:
                if spare[0] == pid:  # an idle spare died: forget it, a new one is forked
                    self.spares.remove(spare)
                    for fd in spare[1:]:
                        os.close(fd)
                    break

    def _kill_strays(self) -> None:
        """Kill processes re-parented to the zygote (it is a subreaper) that are not supervisors."""
        supervisors = {entry[1] for entry in self.active.values()} | {spare[0] for spare in self.spares}
        supervisors |= self.handed_out
        for _ in range(50):
            strays = [p for p in _children(os.getpid()) if p not in supervisors]
            if not strays:
                return
            for p in strays:
                _kill(p)
            self._reap()

    def shutdown(self) -> None:
        for _, pid, _ in list(self.active.values()):
            _kill(pid)
        for spare in self.spares:
            _kill(spare[0])
        for pid in self.handed_out:
            _kill(pid)
        self.handed_out.clear()
        self.active.clear()
        self.spares.clear()
        self._reap()
        self._kill_strays()

    def _send(self, message: dict) -> None:
        _write_all(self.proto_out, encode_frame(message))


#: The user process's "done" message to its supervisor: tag b"D" and the exit status it is about to
#: exit with (everything it printed is flushed by then). A process killed by a signal sends none;
#: its supervisor then learns the status from waitpid.
STATUS = struct.Struct("=ci")


class Supervisor:
    """One call's trusted process, forked as a spare before any request exists.

    Ahead of time it makes the output pipes, enters the per-call namespaces (when on) and forks the
    user process, which locks itself down and waits for its request. The request goes to the user
    process and the control message (deadline, output cap) to the supervisor, from the host in direct
    mode or from the zygote in mediated mode. The supervisor then enforces the deadline, collects the
    capped output and the exit status, kills whatever is left, cleans up and reports one result frame.
    """

    def __init__(self, zygote: Zygote, control_fd: int, go_fd: int, result_fd: int) -> None:
        self.z = zygote
        self.control_fd = control_fd
        self.go_fd = go_fd
        self.result_fd = result_fd
        self.workdir: str | None = None
        self.cap = 65536

    def run(self) -> None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # zygote gone -> the call goes too
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1)
        if self.z.per_call_ns:
            # Pid 1 of the call's namespace: signals sent from inside it, even SIGKILL, do not
            # reach it unless it handles them, so Python's SIGINT handler goes.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        prepared, failure = None, ""
        try:
            prepared = self._prepare()
        except BaseException as exc:  # reported as the result of the request this spare receives
            failure = f"sandbox set-up failed: {type(exc).__name__}: {exc}"
        control = read_frame(self.control_fd)
        started = time.monotonic()
        if control is None:  # the zygote is shutting down and never used this spare
            if prepared is not None:
                self._kill_call(prepared[0])
            return
        self.cap = int(control.get("max_output_bytes") or 65536)
        if prepared is None:
            result = _error_result(control["id"], failure)
        else:
            try:
                result = self._collect(control, prepared[0], *prepared[1], started)
            except BaseException as exc:  # trusted-code failure: report it as the call's result
                self._kill_call(prepared[0])
                result = _error_result(control["id"], f"sandbox supervisor error: {type(exc).__name__}: {exc}")
        # Clean up before reporting: the host may hand the next call to this zygote at once.
        self._cleanup()
        _write_all(self.result_fd, encode_frame(result))
        os.close(self.result_fd)

    def _prepare(self) -> tuple[int, tuple[int, int, int]]:
        """Fork the call's chain up to a user process waiting for its request; return its pid."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        if self.z.per_call_ns:
            _enter_call_namespaces(self.z.tmpfs_mb)
            LIBC.prctl(PR_SET_DUMPABLE, 0)  # the user process may not ptrace its supervisor
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (out_r, err_r, status_r, self.control_fd, self.result_fd):
                    os.close(fd)
                _user_process(self, out_w, err_w, status_w, self.go_fd, drop_caps=self.z.per_call_ns)
            except BaseException as exc:  # set-up failed before the code ran: say why on its stderr
                _report_setup_error(exc)
            finally:
                os._exit(127)
        for fd in (out_w, err_w, status_w, self.go_fd):
            os.close(fd)
        if not self.z.per_call_ns:
            self.workdir = os.path.join(self.z.base_dir, f"call-{pid}")
        return pid, (out_r, err_r, status_r)

    def _collect(self, control: dict, pid: int, out_r: int, err_r: int, status_r: int, started: float) -> dict:
        deadline = started + float(control["timeout_s"])
        buffers = {out_r: bytearray(), err_r: bytearray()}
        totals = {out_r: 0, err_r: 0}
        poller = select.poll()
        for fd in (out_r, err_r, status_r):
            poller.register(fd, select.POLLIN)
        open_fds = {out_r, err_r}
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
                poller.register(pidfd, select.POLLIN)
            except OSError:
                pidfd = -1
        status_bytes = b""
        exit_code: int | None = None
        ended_at: float | None = None
        timed_out = False
        drain_until: float | None = None

        def take(fd: int, chunk: bytes) -> None:
            totals[fd] += len(chunk)
            room = self.cap - len(buffers[fd])
            if room > 0:
                buffers[fd] += chunk[:room]

        while True:
            now = time.monotonic()
            if exit_code is None and not timed_out and now >= deadline:
                timed_out, ended_at = True, now
                self._kill_call(pid)
                drain_until = now + 2.0
            if drain_until is not None and (not open_fds or now >= drain_until):
                break  # all output read, or writers that survived the kill: give up on theirs
            limit = (drain_until if drain_until is not None else deadline) - now
            if exit_code is None and pidfd < 0:
                limit = min(limit, 0.005)  # no pidfd: poll for the child's exit
            for fd, _ in poller.poll(max(0, int(limit * 1000) + 1)):
                if fd == pidfd:
                    poller.unregister(pidfd)
                    os.close(pidfd)
                    pidfd = -1
                    continue
                chunk = os.read(fd, 1 << 16)
                if fd == status_r:
                    status_bytes += chunk
                    if not chunk:
                        poller.unregister(fd)
                elif chunk:
                    take(fd, chunk)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if exit_code is not None or timed_out:
                continue
            finished = self._finished(pid, status_bytes)
            if finished is None:
                continue
            exit_code, by_user = finished
            ended_at = time.monotonic()
            if by_user:
                # The program flushed its output and said so: what it wrote is in the pipes now, so
                # read that without waiting for the pipes to close, then end the call.
                for fd in list(open_fds):
                    os.set_blocking(fd, False)
                    try:
                        while True:
                            chunk = os.read(fd, 1 << 16)
                            if not chunk:
                                break
                            take(fd, chunk)
                    except BlockingIOError:
                        pass
                break
            self._kill_call(pid)  # background children must not outlive the program
            drain_until = time.monotonic() + 2.0
        self._kill_call(pid)
        return {
            "op": "result",
            "id": control["id"],
            "stdout": bytes(buffers[out_r]).decode("utf-8", "replace"),
            "stderr": bytes(buffers[err_r]).decode("utf-8", "replace"),
            "exit_code": -signal.SIGKILL if timed_out else exit_code,
            "timed_out": timed_out,
            "duration_s": (ended_at or time.monotonic()) - started,
            "truncated": totals[out_r] > self.cap or totals[err_r] > self.cap,
        }

    def _finished(self, pid: int, status_bytes: bytes) -> tuple[int, bool] | None:
        """(exit code, reported by the program itself) once the user process is done, else None."""
        if len(status_bytes) >= STATUS.size:
            _, value = STATUS.unpack(status_bytes[: STATUS.size])
            return value, True
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return -signal.SIGKILL, False
        return (_exit_code(status), False) if got == pid else None

    def _kill_call(self, pid: int) -> None:
        """Kill the user process and every process it started."""
        if self.z.per_call_ns:
            # As pid 1 of the call's namespace, -1 reaches every other process in it.
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _kill(pid)
        for _ in range(200):
            children = _children(os.getpid())
            if not children:
                return
            for child in children:
                _kill(child)
            # Reap so re-parented grandchildren appear as our children on the next pass.
            for _ in children:
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break
            time.sleep(0.001)

    def _cleanup(self) -> None:
        if self.workdir is not None:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        for directory in self.z.wipe_dirs:
            _wipe(directory)


# -------------------------------------------------------------------- per-call helpers
def _write_id_maps(uid: int, gid: int) -> None:
    """Map the caller's ids to themselves in the user namespace it just entered."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)


def _enter_call_namespaces(tmpfs_mb: int) -> None:
    """As pid 1 of the call's fresh pid namespace: private mounts, then a user namespace of its own.

    New mount and ipc namespaces get a fresh tmpfs /tmp and /dev/shm and a /proc of this pid
    namespace (mounted while still capable in the zygote's user namespace); the call's own user
    namespace then makes RLIMIT_NPROC count only this call's processes.
    """
    uid, gid = os.getuid(), os.getgid()
    LIBC.prctl(PR_SET_DUMPABLE, 1)  # id maps are written through /proc/self
    LIBC.unshare(CLONE_NEWNS | CLONE_NEWIPC)
    LIBC.mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    options = f"size={tmpfs_mb}m,mode=1777"
    LIBC.mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, options)
    if os.path.isdir("/dev/shm"):
        LIBC.mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, options)
    LIBC.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    LIBC.unshare(CLONE_NEWUSER)
    _write_id_maps(uid, gid)


#: File descriptors of the user process while it waits: its request pipe and its status pipe.
GO_FD, STATUS_FD = 3, 4


def _user_process(sup: Supervisor, out_w: int, err_w: int, status_w: int, go_r: int, drop_caps: bool) -> None:
    """The process that runs the code: locked down and warmed up ahead, then waits for its request."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(go_r, GO_FD, inheritable=False)
    os.dup2(status_w, STATUS_FD, inheritable=False)
    os.closerange(STATUS_FD + 1, 1 << 16)
    drop = sup.z.drop_uid
    if drop is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(int(drop[1]))
        os.setuid(int(drop[0]))
    # Set after any uid change: the kernel clears the parent-death signal on credential changes.
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1)
    if drop_caps:
        LIBC.drop_capabilities()
    # Still non-dumpable while it waits: another call's code running as the same uid (Docker)
    # cannot ptrace this spare or read its /proc files to tamper with a later call.
    LIBC.prctl(PR_SET_DUMPABLE, 0)
    main = _prepare_interpreter()
    frame = read_raw_frame(GO_FD)
    os.close(GO_FD)
    if frame is None:
        os._exit(0)  # never used (the zygote shut down)
    LIBC.prctl(PR_SET_DUMPABLE, 1)  # its own /proc/self entries belong to it again
    req = json.loads(frame[HEADER.size :].decode("utf-8"))
    del frame
    if sup.z.per_call_ns:
        workdir = "/tmp"
    else:
        workdir = os.path.join(sup.z.base_dir, f"call-{os.getpid()}")
        os.mkdir(workdir, 0o700)
    _write_files(workdir, req.get("files") or {})
    if req.get("stdin"):
        stdin_fd = _stdin_fd(req["stdin"])
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)
    import resource

    memory = int(req["memory_mb"]) * 1024 * 1024
    cpu = int(float(req["timeout_s"])) + 1
    fsize = int(req["fsize_mb"]) * 1024 * 1024
    limits = [
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if req.get("nproc"):
        limits.append((resource.RLIMIT_NPROC, int(req["nproc"]), int(req["nproc"])))
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            # A lower pre-existing hard limit stays; only lowering is attempted.
            _, old_hard = resource.getrlimit(which)
            resource.setrlimit(which, (min(soft, old_hard), old_hard))
    os.chdir(workdir)
    env = dict(sup.z.env)
    env["HOME"] = workdir
    env["TMPDIR"] = workdir
    os.environ.clear()
    os.environ.update(env)
    _run_user_code(req["code"], main)


def _prepare_interpreter():
    """Make this forked process look like a fresh ``python -c`` (before any request arrives)."""
    import io
    import random
    import types

    random.seed()  # forked children would otherwise share the zygote's random state
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="strict")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="strict")
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    sys.argv = ["-c"]
    sys.path.insert(0, "")  # like `python -c`: modules in the working directory import
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    # Warm the compiler and the JSON decoder now, off the request's path (first use faults pages in).
    compile("x = [i for i in range(3)]\nprint(x)", "<warm-up>", "exec")
    json.loads('{"a": [1, "b"]}')
    return main


def _run_user_code(code: str, main) -> None:
    """Run ``code`` as ``python -c`` would in this prepared process, then exit (never returns)."""
    import atexit

    status = 0
    try:
        try:
            compiled = compile(code, "<string>", "exec")
        except SyntaxError:
            exc_type, exc, _ = sys.exc_info()
            _print_exception(exc_type, exc, None)
            status = 1
        else:
            exec(compiled, main.__dict__)
    except SystemExit as exc:
        status = _system_exit_status(exc)
    except BaseException:
        exc_type, exc, tb = sys.exc_info()
        _print_exception(exc_type, exc, tb.tb_next if tb is not None else None)
        status = 1
    status = _shutdown(status, atexit)
    try:
        # Tell the supervisor now (everything is flushed) instead of making it wait for the exit.
        os.write(STATUS_FD, STATUS.pack(b"D", status))
    except OSError:
        pass  # the program closed the fd: its exit status still arrives the slow way
    os._exit(status)


def _report_setup_error(exc: BaseException) -> None:
    try:
        os.write(2, f"sandbox set-up failed: {type(exc).__name__}: {exc}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _print_exception(exc_type, exc, tb) -> None:
    import traceback

    try:
        traceback.print_exception(exc_type, exc, tb)
    except BaseException:
        pass


def _system_exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def _shutdown(status: int, atexit) -> int:
    """Interpreter-exit duties of a normal run: join threads, run atexit hooks, flush."""
    import threading

    try:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        atexit._run_exitfuncs()
    except SystemExit as exc:
        status = _system_exit_status(exc)
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120  # what CPython returns when flushing stdout fails at exit
    return status


def _stdin_fd(data: str | None) -> int:
    """A readable fd holding the call's stdin: a memfd with the bytes, or /dev/null."""
    if not data:
        return os.open(os.devnull, os.O_RDONLY)
    raw = base64.b64decode(data)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("stdin", 0)
    else:
        import tempfile

        fd, path = tempfile.mkstemp()
        os.unlink(path)
    os.write(fd, raw)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _write_files(workdir: str, files: dict) -> None:
    for name, encoded in files.items():
        path = os.path.join(workdir, name)
        parent = os.path.dirname(path)
        if parent != workdir:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(encoded))


def _wipe(directory: str) -> None:
    import shutil

    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (via /proc/PID/task/*/children, else a /proc scan)."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                found.extend(int(p) for p in handle.read().split())
        return found
    except OSError:
        pass
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(name))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _exit_code(status: int) -> int:
    if hasattr(os, "waitstatus_to_exitcode"):
        return os.waitstatus_to_exitcode(status)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _error_result(request_id: int, message: str) -> dict:
    return {
        "op": "result",
        "id": request_id,
        "stdout": "",
        "stderr": message,
        "exit_code": -signal.SIGKILL,
        "timed_out": False,
        "duration_s": 0.0,
        "truncated": False,
    }


def main(config_json: str) -> None:
    """Entry point inside the sandbox (see :data:`BOOTSTRAP`)."""
    zygote = Zygote(json.loads(config_json))
    zygote.start()
    zygote.serve()
