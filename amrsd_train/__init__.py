"""AMR-SD trainer: GRPO (and, on the same code path, AMR-SD) over the amrsd_envs environments.

``amrsd_train.run(config)`` trains from a TrainConfig, a dict or a YAML path.
"""

from amrsd_train.config import SFTConfig, TrainConfig
from amrsd_train.run import run

__all__ = ["run", "TrainConfig", "SFTConfig"]
