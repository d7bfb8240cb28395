"""AMR-SD trainer: GRPO (and, on the same code path, AMR-SD) over the amrsd_envs environments.

``amrsd_train.run(config)`` trains from a TrainConfig, a dict or a YAML path.
"""

import os

# OpenMP threads that spin while idle make two torch processes on a small machine (a trainer and its tests, an
# eval server) slow each other down ~10x; sleeping waiters cost little when alone. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from amrsd_train.config import SFTConfig, TrainConfig  # noqa: E402
from amrsd_train.run import run  # noqa: E402

__all__ = ["run", "TrainConfig", "SFTConfig"]
