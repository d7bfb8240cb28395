"""Sandboxes that run untrusted Python code: the ``Sandbox`` protocol and its backends.

Usage::

    from amrsd_envs.sandbox import make_sandbox

    with make_sandbox("local") as sandbox:           # or make_sandbox("docker", image=...)
        result = sandbox.run("print(open('x.txt').read())", files={"x.txt": "hi"}, timeout_s=5)
        result.stdout, result.exit_code, result.timed_out

Backends (registered in :data:`BACKENDS`):

``local``
    :class:`~amrsd_envs.sandbox.local.LocalSandbox`. bubblewrap when present, else ``unshare``
    namespaces, else a plain subprocess with rlimits; ``sandbox.isolation`` says which it got and
    ``require=`` refuses anything weaker. A warm zygote inside the isolation forks each call.
``docker``
    :class:`~amrsd_envs.sandbox.docker_backend.DockerSandbox`. A pool of warm locked-down containers
    (no network, read-only root, memory/pids/CPU cgroup limits, all capabilities dropped, non-root),
    the same zygote as the container's main process. Needs ``pip install docker`` and an engine.

Guarantees shared by both (each backend's module docstring and sandboxes/README.md give the details
and the limits): ``files`` land in a fresh working directory that is the code's cwd; nothing persists
between calls; a timeout kills every process of the call and returns ``timed_out=True`` with a
non-zero exit code; output beyond ``max_output_bytes`` per stream is cut (``truncated=True``); the
host's environment variables never reach the code; whatever the code does (crash, segfault, fork or
memory bomb) comes back as an :class:`ExecResult`, never as an exception in the caller.
Defaults: timeout 10 s, memory 512 MB, 64 processes, no network, 64 KiB of output per stream.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from amrsd_envs.sandbox.base import ExecResult, IsolationLevel, Sandbox, SandboxError


def _local(**options: object) -> Sandbox:
    from amrsd_envs.sandbox.local import LocalSandbox

    return LocalSandbox(**options)  # type: ignore[arg-type]


def _docker(**options: object) -> Sandbox:
    from amrsd_envs.sandbox.docker_backend import DockerSandbox

    return DockerSandbox(**options)  # type: ignore[arg-type]


#: Backend name -> factory taking the backend's keyword options.
BACKENDS: dict[str, Callable[..., Sandbox]] = {}


def register_backend(name: str, factory: Callable[..., Sandbox]) -> None:
    """Add a backend under ``name``; a name can be registered once."""
    if name in BACKENDS:
        raise ValueError(f"sandbox backend {name!r} is already registered; registered: {sorted(BACKENDS)}")
    BACKENDS[name] = factory


register_backend("local", _local)
register_backend("docker", _docker)


def make_sandbox(backend: str = "local", **options: object) -> Sandbox:
    """Create a sandbox of the named backend with its options (limits such as ``timeout_s``).

    Raises ValueError for an unknown backend (listing the valid ones), TypeError for an option the
    backend does not take, and SandboxError when the backend cannot start here.
    """
    try:
        factory = BACKENDS[backend]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sandbox backend {backend!r}; valid backends: {sorted(BACKENDS)}") from None
    return factory(**options)


__all__ = [
    "BACKENDS",
    "ExecResult",
    "IsolationLevel",
    "Sandbox",
    "SandboxError",
    "SharedSandbox",
    "make_sandbox",
    "register_backend",
]


class SharedSandbox:
    """One sandbox for many envs: started on first ``run``, closed only by its owner.

    A trainer keeps hundreds of envs (``tasks_per_step * group_size`` of them, more for evaluation); each starting
    its own zygote or container pool would cost a process (or a container) per env. Pass one ``SharedSandbox`` as
    ``gym.make(..., sandbox=shared)`` to all of them: nothing starts until some episode runs Python, every env then
    uses the same backend, and ``env.close()`` leaves it running; ``shared.close()`` stops it.
    """

    def __init__(self, backend: str = "local", **options: object):
        if backend not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {backend!r}; valid backends: {sorted(BACKENDS)}")
        self.backend, self.options = backend, dict(options)
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()
        self.starts = 0  # how many times a backend was started (1 after any use, until close)

    @property
    def started(self) -> bool:
        return self._sandbox is not None

    def get(self) -> Sandbox:
        """The running backend, started on the first call (for its attributes, e.g. ``get().isolation``)."""
        with self._lock:
            if self._sandbox is None:
                self._sandbox = make_sandbox(self.backend, **self.options)
                self.starts += 1
            return self._sandbox

    def run(self, code: str, **kwargs: Any) -> ExecResult:
        return self.get().run(code, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None

    def __enter__(self) -> "SharedSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
