"""The docker sandbox backend: a pool of warm containers, each running one zygote as its main process.

Each container is created once with: no network (``network_mode="none"``), a memory limit (no swap), a
pids limit, a CPU quota (``nano_cpus``), a read-only root filesystem, a tmpfs /tmp as the only
writable place besides /dev/shm, ``cap_drop=ALL``, ``no-new-privileges``, a non-root user
(``user``, default 10001), logging off (the protocol would otherwise fill the engine's log files) and
optional read-only binds. Its main process is the zygote (:mod:`amrsd_envs.sandbox.zygote`, the same
file the local backend uses), spoken to over the container's attached stdin/stdout: a call is one
frame each way and a fork inside, not a ``docker exec`` or ``docker run``.

Per call: a pooled container is checked out exclusively (thread-safe; ``pool_size`` calls run in
parallel), a supervisor process makes a fresh working directory under /tmp, the user process runs in
its own session with RLIMIT_AS/CPU/FSIZE/CORE, and at exit or at the deadline the supervisor (a child
subreaper) kills the process group and every descendant; /tmp and /dev/shm are then emptied, so no file
outlives the call. The host is the backstop: a container that stops answering past the deadline or
whose zygote dies is removed and replaced by a fresh one.

Guarantees: no network; no host file visible except the binds (read-only); memory, processes and CPU
bounded for the whole container by cgroups (a fork or memory bomb hits the container's limits, not
the host's); nothing written persists between calls; every process of a call is gone when it returns.
Not guaranteed: calls in one container run as the same uid as the zygote (Docker's default seccomp
profile forbids per-call namespaces), so hostile code can kill the zygote's helper processes; this
costs a container restart, never an escape. The zygote runs as pid 1 of the container, which the
kernel protects from signals sent inside it.

Images: real users build ``sandboxes/python/Dockerfile`` (``DEFAULT_IMAGE``). Without a registry the
tests use ``scripts/make_test_image.sh``: an empty image (``TEST_IMAGE``) run with read-only binds of
the host's system directories (:func:`host_system_binds`), so the host's ``/usr/bin/python3`` runs inside.
"""

from __future__ import annotations

import collections
import json
import queue
import socket
import struct
import threading
import uuid
import weakref
from pathlib import Path
from typing import Sequence

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
from amrsd_envs.sandbox.channel import ZygoteChannel, call_with_backstop
from amrsd_envs.sandbox.zygote import BOOTSTRAP

ZYGOTE_SOURCE = (Path(__file__).with_name("zygote.py")).read_text(encoding="utf-8")
DEFAULT_IMAGE = "amrsd-sandbox-python:latest"
TEST_IMAGE = "amrsd-sandbox-test:latest"
LABEL = "amrsd.sandbox"
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/etc")
_ATTACH_HEADER = struct.Struct(">BxxxL")


def host_system_binds() -> list[str]:
    """The host system directories that exist, for running ``TEST_IMAGE`` with the host's Python."""
    return [path for path in SYSTEM_DIRS if Path(path).exists()]


def _docker_client(client: object | None):
    if client is not None:
        return client
    try:
        import docker
    except ImportError as exc:
        raise SandboxError(
            "the docker backend needs the docker SDK: pip install 'amrsd[docker]' (or pip install docker)"
        ) from exc
    try:
        found = docker.from_env(version="auto")
        found.ping()
    except Exception as exc:  # the SDK raises DockerException subclasses and requests errors alike
        raise SandboxError(
            f"the Docker engine is unreachable ({type(exc).__name__}: {exc}); start it "
            "(scripts/start_dockerd.sh) or set DOCKER_HOST"
        ) from exc
    return found


class _AttachStream:
    """Demultiplexes a non-TTY attach socket: stdout payload to the reader, stderr to a log."""

    def __init__(self, sock: socket.socket, log: collections.deque) -> None:
        self.sock = sock
        self.log = log
        self.pending = b""
        self.buffer = bytearray()

    def _recv_exact(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            chunk = self.sock.recv(max(size - len(self.buffer), 1 << 16))
            if not chunk:
                return None
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the container's stdout; ``b""`` when the stream ends."""
        while not self.pending:
            header = self._recv_exact(_ATTACH_HEADER.size)
            if header is None:
                return b""
            kind, size = _ATTACH_HEADER.unpack(header)
            payload = self._recv_exact(size)
            if payload is None:
                return b""
            if kind == 1:
                self.pending = payload
            else:
                self.log.append(payload.decode("utf-8", "replace").rstrip())
        data, self.pending = self.pending[:n], self.pending[n:]
        return data


class _Container:
    """One pooled container with its zygote channel."""

    def __init__(self, owner: DockerSandbox) -> None:
        api = owner.client.api
        self.api = api
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        config = {
            "instance": owner.instance_id,
            "per_call_ns": True,  # probed; Docker's default seccomp profile normally refuses it
            "base_dir": "/tmp",
            "wipe_dirs": ["/tmp", "/dev/shm"],
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
            "preload": owner.preload,
            "spares": 3,
        }
        host_config = api.create_host_config(
            network_mode="none",
            mem_limit=f"{owner.container_memory_mb}m",
            memswap_limit=f"{owner.container_memory_mb}m",
            pids_limit=owner.container_pids,
            nano_cpus=int(owner.cpus * 1e9),
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={owner.tmpfs_mb}m,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            binds={host: {"bind": inside, "mode": "ro"} for host, inside in owner.binds},
            log_config={"type": "none", "config": {}},
        )
        created = api.create_container(
            owner.image,
            command=[owner.python, "-I", "-c", BOOTSTRAP, ZYGOTE_SOURCE, json.dumps(config)],
            user=owner.user,
            environment={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"},
            working_dir="/tmp",
            stdin_open=True,
            tty=False,
            hostname="sandbox",
            network_disabled=True,
            labels={LABEL: "1", f"{LABEL}.instance": owner.instance_id},
            host_config=host_config,
        )
        self.id: str = created["Id"]
        try:
            # Attach before start so the zygote's hello frame cannot be missed.
            raw = api.attach_socket(self.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self.sock: socket.socket = getattr(raw, "_sock", raw)
            stream = _AttachStream(self.sock, self.stderr_tail)
            self.channel = ZygoteChannel(self.sock.sendall, stream.read, f"container-{self.id[:12]}")
            api.start(self.id)
            self.hello = self.channel.wait_hello(owner.start_timeout_s, self.diagnostics)
        except Exception:
            self.remove()
            raise

    def diagnostics(self) -> str:
        try:
            state = self.api.inspect_container(self.id)["State"]
            status = f"status={state.get('Status')} exit={state.get('ExitCode')} error={state.get('Error')!r}"
        except Exception as exc:  # the container may already be gone
            status = f"inspect failed: {exc}"
        tail = " | ".join(list(self.stderr_tail)[-8:])
        return f"{status}; stderr: {tail or '(empty)'}"

    def remove(self) -> None:
        try:
            self.sock.close()
        except Exception:  # noqa: BLE001 - best effort; the container removal below is what matters
            pass
        try:
            self.api.remove_container(self.id, force=True)
        except Exception as exc:  # already removed (auto or by close) is fine
            if "No such container" not in str(exc) and "is already in progress" not in str(exc):
                raise


class DockerSandbox:
    """Runs Python code in a pool of warm, locked-down containers (see the module docstring).

    Args:
        image: image to run (default ``amrsd-sandbox-python:latest`` from sandboxes/python/Dockerfile).
        binds: host paths mounted read-only at the same path, or ``(host, container)`` pairs
            (:func:`host_system_binds` for ``TEST_IMAGE``).
        pool_size: warm containers; that many calls run in parallel (default 1).
        python: interpreter inside the image (default ``python3`` on PATH).
        user: ``uid:gid`` the container runs as (default ``10001:10001``; never root).
        timeout_s, memory_mb: defaults for :meth:`run` (memory is also RLIMIT_AS per call).
        pids: processes per call; the container's pids limit is this plus room for the zygote.
        cpus: CPU quota per container (default 1.0).
        container_memory_mb: the container's cgroup memory limit (default memory_mb + 256).
        max_output_bytes, fsize_mb, tmpfs_mb: output cap per stream, largest file, size of /tmp.
        preload: extra modules the zygote imports once.
        client: a ``docker.DockerClient`` (default ``docker.from_env()``).
        require: the weakest isolation accepted (docker always provides CONTAINER).
    """

    backend = "docker"
    isolation = IsolationLevel.CONTAINER

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        binds: Sequence[str | tuple[str, str]] = (),
        pool_size: int = 1,
        python: str = "python3",
        user: str = "10001:10001",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_mb: int = DEFAULT_MEMORY_MB,
        pids: int = DEFAULT_PIDS,
        cpus: float = 1.0,
        container_memory_mb: int | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        fsize_mb: int = DEFAULT_FSIZE_MB,
        tmpfs_mb: int = 256,
        preload: Sequence[str] = (),
        start_timeout_s: float = 60.0,
        client: object | None = None,
        require: IsolationLevel | int = IsolationLevel.NONE,
    ) -> None:
        if IsolationLevel(require) > self.isolation:
            raise SandboxError(f"docker provides {self.isolation.name}, weaker than require={IsolationLevel(require).name}")
        self.image = image
        self.pool_size = check_positive_int(pool_size, "pool_size")
        self.python = python
        if str(user).split(":")[0] in ("0", "root"):
            raise ValueError(f"user={user!r}: the sandbox never runs as root; pass a uid:gid such as 10001:10001")
        self.user = str(user)
        self.timeout_s = check_timeout(timeout_s)
        self.memory_mb = check_positive_int(memory_mb, "memory_mb", 16)
        self.pids = check_positive_int(pids, "pids")
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
            raise ValueError(f"cpus must be a positive number, got {cpus!r}")
        self.cpus = float(cpus)
        self.container_memory_mb = check_positive_int(
            container_memory_mb if container_memory_mb is not None else memory_mb + 256, "container_memory_mb", 64
        )
        self.container_pids = self.pids + 16  # the zygote, its supervisors and their helpers
        self.max_output_bytes = check_positive_int(max_output_bytes, "max_output_bytes")
        self.fsize_mb = check_positive_int(fsize_mb, "fsize_mb")
        self.tmpfs_mb = check_positive_int(tmpfs_mb, "tmpfs_mb")
        self.preload = list(preload)
        self.start_timeout_s = check_timeout(start_timeout_s, "start_timeout_s")
        self.binds: list[tuple[str, str]] = []
        for entry in binds:
            host, inside = (entry, entry) if isinstance(entry, str) else entry
            if not str(host).startswith("/") or not str(inside).startswith("/"):
                raise ValueError(f"binds entry {entry!r} must use absolute paths")
            self.binds.append((str(host), str(inside)))
        self.client = _docker_client(client)
        try:
            self.client.images.get(image)
        except Exception as exc:
            raise SandboxError(
                f"docker image {image!r} not found ({exc}); build sandboxes/python/Dockerfile "
                f"(docker build -t {DEFAULT_IMAGE} sandboxes/python) or run scripts/make_test_image.sh"
            ) from exc
        self.instance_id = f"amrsd-sbx-{uuid.uuid4().hex[:12]}"
        self._idle: queue.Queue[_Container | None] = queue.Queue()
        self._all: set[_Container] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _remove_all, self._all)
        try:
            for _ in range(self.pool_size):
                self._idle.put(self._new_container())
        except Exception:
            self.close()
            raise
        first = next(iter(self._all))
        self.per_call_namespaces = bool(first.hello.get("per_call_ns"))
        self.sandbox_python = first.hello.get("python", "")

    def _new_container(self) -> _Container:
        try:
            container = _Container(self)
        except SandboxError:
            raise
        except Exception as exc:
            raise SandboxError(f"could not start a sandbox container from {self.image!r}: {exc}") from exc
        with self._lock:
            self._all.add(container)
        return container

    @property
    def container_ids(self) -> list[str]:
        """Ids of the containers this sandbox currently holds."""
        with self._lock:
            return [c.id for c in self._all]

    def run(
        self,
        code: str,
        *,
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        files: dict[str, str | bytes] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        """Run ``code`` like ``python -c`` in a fresh working directory in a pooled container.

        Blocks while all ``pool_size`` containers are busy. Never raises for what the code does.
        """
        timeout = check_timeout(self.timeout_s if timeout_s is None else timeout_s)
        memory = check_positive_int(self.memory_mb if memory_mb is None else memory_mb, "memory_mb", 16)
        request = {
            "code": check_code(code),
            "files": encode_files(files),
            "stdin": encode_stdin(stdin),
            "timeout_s": timeout,
            "memory_mb": memory,
            "nproc": None,  # the container's pids cgroup bounds processes (RLIMIT_NPROC counts host-wide per uid)
            "fsize_mb": self.fsize_mb,
            "max_output_bytes": self.max_output_bytes,
        }
        if self._closed:
            raise SandboxError("sandbox is closed")
        # The pool holds containers, or None for a slot whose container was removed and is
        # replaced lazily here (so a failed restart never shrinks the pool).
        container = self._idle.get()
        try:
            if self._closed:
                raise SandboxError("sandbox is closed")
            if container is not None and not container.channel.alive:
                self._discard(container)
                container = None
            if container is None:
                container = self._new_container()
            broken: list[bool] = []
            result = call_with_backstop(container.channel, request, timeout, lambda: broken.append(True))
            if broken or not container.channel.alive:
                self._discard(container)
                container = None
            return result
        finally:
            self._idle.put(container)

    def _discard(self, container: _Container) -> None:
        with self._lock:
            self._all.discard(container)
        container.remove()

    def close(self) -> None:
        """Remove every container of this sandbox. Idempotent."""
        self._closed = True
        self._finalizer()
        for _ in range(self.pool_size):
            self._idle.put(None)  # wakes callers waiting for a container; they see the sandbox closed

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DockerSandbox(image={self.image!r}, pool_size={self.pool_size}, id={self.instance_id})"


def _remove_all(containers: set[_Container]) -> None:
    for container in list(containers):
        container.remove()
        containers.discard(container)
