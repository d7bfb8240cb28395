"""Third-party tools, verifiers and task suites, found through entry points.

An installed distribution extends AMR-SD by declaring entry points in three groups of its ``pyproject.toml``::

    [project.entry-points."amrsd.tools"]
    weather = "amrsd_weather.tools"              # a module: importing it registers its tools
    [project.entry-points."amrsd.verifiers"]
    iso_date = "amrsd_weather.verifiers:setup"   # or a callable: called once, with no arguments
    [project.entry-points."amrsd.tasks"]
    weather = "amrsd_weather.tasks"              # a package: every *.yaml / *.yml under its folder

Contracts, one per group:

- ``amrsd.tools`` / ``amrsd.verifiers``: the entry point names a module, which is imported, or a callable, which is
  called with no arguments. Either registers with :func:`amrsd_envs.tools.register_tool` /
  :func:`amrsd_envs.verifiers.register_verifier` (a name already taken raises, naming the entry point).
- ``amrsd.tasks``: the entry point names a package (no ``:attr``) installed as files on disk; every ``*.yaml`` /
  ``*.yml`` below its folder, recursively, is a task family (ship them as package data). These families join the
  built-in suite in :func:`amrsd_envs.catalog.load_tasks` when it is called without a path (also when
  ``$AMRSD_TASKS`` replaces the built-in suite); a family id already in use is reported like any duplicate.

:func:`load_plugins` runs once per process (later calls return the first result, or raise its error again); the
catalog calls it before any task file is validated, so a task file may name a plugin's tool or verifier. Tools
and verifiers of all plugins are loaded before task suites are resolved. A plugin that fails to load raises
:class:`PluginError` naming the group, the entry point and its distribution.
"""

from __future__ import annotations

import importlib.metadata
import threading
import types
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GROUPS", "PluginError", "Plugins", "load_plugins"]

TOOLS_GROUP = "amrsd.tools"
VERIFIERS_GROUP = "amrsd.verifiers"
TASKS_GROUP = "amrsd.tasks"
GROUPS = (TOOLS_GROUP, VERIFIERS_GROUP, TASKS_GROUP)
TASK_SUFFIXES = (".yaml", ".yml")


class PluginError(RuntimeError):
    """A plugin's entry point could not be loaded; the message names the group, the entry point and the distribution."""


@dataclass(frozen=True)
class Plugins:
    """What :func:`load_plugins` loaded: entry point names per group, and each task suite's folder."""

    tools: tuple[str, ...] = ()
    verifiers: tuple[str, ...] = ()
    task_dirs: tuple[Path, ...] = ()

    def task_files(self) -> list[Path]:
        """Every task file of the plugin suites: suite by suite (entry point name order), sorted within each."""
        return [
            f for d in self.task_dirs for f in sorted(d.rglob("*")) if f.suffix in TASK_SUFFIXES and f.is_file()
        ]


_lock = threading.RLock()
_result: Plugins | PluginError | None = None
_loading = False


def load_plugins() -> Plugins:
    """Load every ``amrsd.tools``, ``amrsd.verifiers`` and ``amrsd.tasks`` entry point, once per process."""
    global _result, _loading
    with _lock:
        if _loading:  # same thread, re-entered: a plugin loads tasks while it is being imported
            raise PluginError("load_plugins() was called by a plugin while plugins were loading (load tasks lazily)")
        if _result is None:
            _loading = True
            try:
                _result = _load_all()
            except PluginError as exc:
                _result = exc
            finally:
                _loading = False
        if isinstance(_result, PluginError):
            raise _result
        return _result


def _load_all() -> Plugins:
    import amrsd_envs.tools  # noqa: F401  (built-ins first, so a plugin reusing a built-in name is the one that fails)
    import amrsd_envs.verifiers  # noqa: F401

    loaded: dict[str, list[str]] = {TOOLS_GROUP: [], VERIFIERS_GROUP: []}
    for group in (TOOLS_GROUP, VERIFIERS_GROUP):
        for ep in _entry_points(group):
            obj = _load(ep)
            if callable(obj):
                _call(ep, obj)
            elif not isinstance(obj, types.ModuleType):
                raise PluginError(f"{_describe(ep)}: names a {type(obj).__name__}; it must name a module or a callable")
            loaded[group].append(ep.name)
    task_dirs = tuple(_task_dir(ep) for ep in _entry_points(TASKS_GROUP))
    return Plugins(tuple(loaded[TOOLS_GROUP]), tuple(loaded[VERIFIERS_GROUP]), task_dirs)


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=group), key=lambda ep: (ep.name, _dist_name(ep)))


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown distribution"


def _describe(ep: importlib.metadata.EntryPoint) -> str:
    return f"plugin entry point {ep.name!r} = {ep.value!r} in group {ep.group!r} of distribution {_dist_name(ep)!r}"


def _load(ep: importlib.metadata.EntryPoint) -> object:
    try:
        return ep.load()
    except Exception as exc:
        raise PluginError(f"{_describe(ep)} failed to load: {type(exc).__name__}: {exc}") from exc


def _call(ep: importlib.metadata.EntryPoint, fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except Exception as exc:
        raise PluginError(f"{_describe(ep)} failed when called: {type(exc).__name__}: {exc}") from exc


def _task_dir(ep: importlib.metadata.EntryPoint) -> Path:
    if ep.attr:
        raise PluginError(f"{_describe(ep)}: a task suite entry point names a package (no ':{ep.attr}')")
    obj = _load(ep)
    locations = list(getattr(getattr(obj, "__spec__", None), "submodule_search_locations", None) or ())
    if len(locations) != 1 or not Path(locations[0]).is_dir():
        raise PluginError(
            f"{_describe(ep)}: names {ep.module!r}, which is not a package installed as one folder on disk; "
            "a task suite is a regular package (with __init__.py) whose folder holds the YAML files"
        )
    root = Path(locations[0])
    if not any(f.suffix in TASK_SUFFIXES for f in root.rglob("*")):
        raise PluginError(f"{_describe(ep)}: no *.yaml or *.yml file under {root} (are they shipped as package data?)")
    return root
