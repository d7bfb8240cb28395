"""One episode's tool session: the context, the allowed tools and the task's stateful world.

The env creates a session per episode with :meth:`ToolSession.for_task`, runs each assistant
message's calls with :meth:`ToolSession.execute`, hands :attr:`ToolSession.world` to a world-state
verifier, and closes the session at episode end (which stops the world's services and deletes its
files).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amrsd_envs.toolcalls import ParsedToolCalls
from amrsd_envs.tools.context import ToolContext
from amrsd_envs.tools.executor import execute_tool_calls
from amrsd_envs.tools.sql import create_sqlite_world

__all__ = ["SERVICES", "ToolSession", "ToolWorld"]


def _inventory_service(seed: int | str) -> Any:
    from amrsd_envs.testing.inventory_service import InventoryService

    return InventoryService(seed=seed)


SERVICES: dict[str, Callable[[int | str], Any]] = {"inventory": _inventory_service}
"""Built-in loopback services a task's ``world.http.service`` may name -> factory(seed)."""


@dataclass(frozen=True)
class ToolWorld:
    """The stateful resources of one episode, as a world-state verifier sees them.

    Attributes:
        sqlite_path: the episode's SQLite database file, or None.
        service: the running HTTP service (e.g. an ``InventoryService``; ``service.state()`` is a
            snapshot), or None.
    """

    sqlite_path: Path | None = None
    service: Any | None = None

    def service_state(self) -> Any | None:
        """Snapshot of the service's state (None when the episode has no service)."""
        return self.service.state() if self.service is not None else None


class ToolSession:
    """Tools, context and world of one episode. Close it (or use ``with``) to release everything."""

    def __init__(
        self,
        ctx: ToolContext,
        allowed_tools: Collection[str],
        world: ToolWorld | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.ctx = ctx
        self.allowed_tools = frozenset(allowed_tools)
        self.world = world
        self._workdir = workdir
        self._closed = False

    @classmethod
    def for_task(
        cls,
        task: Any,
        *,
        sandbox_factory: Callable[[], Any] | None = None,
        **context_options: Any,
    ) -> ToolSession:
        """A session for ``task`` (a ``TaskInstance``): its ``tools``, and its ``world`` if it has one.

        ``task.world`` (optional) must have ``sqlite`` (with rendered ``schema_sql`` and ``seed`` SQL)
        and/or ``http`` (with ``service``, a key of :data:`SERVICES`, and ``seed``), like
        ``amrsd_envs.spec.WorldSpec`` after the catalog rendered its templates. The SQLite file goes to
        a fresh temporary directory; the service is started on a free loopback port and becomes the
        only allowed host. ``context_options`` are passed to :class:`ToolContext`.
        """
        world_spec = getattr(task, "world", None)
        workdir: Path | None = None
        service = None
        sqlite_path = None
        try:
            sqlite_spec = getattr(world_spec, "sqlite", None)
            if sqlite_spec is not None:
                workdir = Path(tempfile.mkdtemp(prefix="amrsd-world-"))
                sqlite_path = create_sqlite_world(sqlite_spec.schema_sql, sqlite_spec.seed, workdir / "world.db")
            http_spec = getattr(world_spec, "http", None)
            if http_spec is not None:
                if http_spec.service not in SERVICES:
                    raise ValueError(
                        f"unknown service {http_spec.service!r} in the task's world; "
                        f"services: {', '.join(sorted(SERVICES))}"
                    )
                service = SERVICES[http_spec.service](http_spec.seed).start()
                context_options.setdefault("allowed_hosts", frozenset({service.host_port}))
                context_options.setdefault("http_base_url", service.base_url)
            ctx = ToolContext(sandbox_factory=sandbox_factory, sqlite_db=sqlite_path, **context_options)
        except BaseException:
            if service is not None:
                service.stop()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        world = ToolWorld(sqlite_path=sqlite_path, service=service) if world_spec is not None else None
        return cls(ctx, getattr(task, "tools", ()), world=world, workdir=workdir)

    def execute(self, parsed: ParsedToolCalls) -> list[dict[str, Any]]:
        """Tool messages for one parsed assistant message (see :func:`execute_tool_calls`)."""
        if self._closed:
            raise RuntimeError("this tool session is closed; the episode has ended")
        return execute_tool_calls(parsed.calls, parsed.errors, self.ctx, self.allowed_tools)

    def close(self) -> None:
        """Close the context, stop the service, delete the world's files (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.ctx.close()
        if self.world is not None and self.world.service is not None:
            self.world.service.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> ToolSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
