"""Adapters from the AMR-SD environments to other training and inference stacks.

* :mod:`amrsd_envs.adapters.trl`: TRL's ``GRPOTrainer(environment_factory=...)`` (tool methods that run inside the
  episode's env, a dataset of task prompts, a reward function from the verifier).
* :mod:`amrsd_envs.adapters.openai_loop`: a plain OpenAI-style ``messages + tools`` loop driving an env with any
  chat-completions client.

Nothing here imports ``trl``, ``torch`` or ``datasets`` at import time; the submodules import them only where a
function needs them.
"""

from __future__ import annotations

__all__: list[str] = []
