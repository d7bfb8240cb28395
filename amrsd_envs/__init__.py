"""AMR-SD environments: multi-turn Gymnasium envs for math, science and tool-use tasks.

Importing this package registers ``AMRSD-Math-v0``, ``AMRSD-Science-v0``, ``AMRSD-ToolUse-v0``,
``AMRSD-BFCL-v0`` (the BFCL single-turn function-calling categories) and ``AMRSD-All-v0`` (every family). It never imports torch; registration itself imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym

__version__ = "0.1.0"

ENV_IDS = {
    "AMRSD-Math-v0": "math",
    "AMRSD-Science-v0": "science",
    "AMRSD-ToolUse-v0": "tooluse",
    "AMRSD-BFCL-v0": "function_calling",
    "AMRSD-All-v0": None,
}


def _register() -> None:
    for env_id, domain in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="amrsd_envs.env:AMRSDEnv", kwargs={"domain": domain})


_register()

if TYPE_CHECKING:
    from amrsd_envs.catalog import TaskCatalog, TaskFamily, TaskInstance, load_task_file, load_tasks
    from amrsd_envs.env import AMRSDEnv
    from amrsd_envs.errors import TaskSpecError
    from amrsd_envs.evaluate import EvalReport
    from amrsd_envs.peers import PeerBuffer

# `evaluate` is not re-exported: the submodule amrsd_envs.evaluate would shadow a function of the same name as soon as
# it is imported. Use `from amrsd_envs.evaluate import evaluate`.
_LAZY = {
    "load_tasks": "amrsd_envs.catalog",
    "load_task_file": "amrsd_envs.catalog",
    "TaskCatalog": "amrsd_envs.catalog",
    "TaskFamily": "amrsd_envs.catalog",
    "TaskInstance": "amrsd_envs.catalog",
    "AMRSDEnv": "amrsd_envs.env",
    "TaskSpecError": "amrsd_envs.errors",
    "EvalReport": "amrsd_envs.evaluate",
    "PeerBuffer": "amrsd_envs.peers",
}


def __getattr__(name: str) -> Any:
    # lazy so that `import amrsd_envs` (done by gym.make's module prefix) stays cheap
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'amrsd_envs' has no attribute {name!r}")


__all__ = ["ENV_IDS", *_LAZY]
