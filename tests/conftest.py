"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest

TEST_TASKS = str(Path(__file__).parent / "data" / "tasks")


@pytest.fixture(scope="session")
def tiny_calc(tmp_path_factory) -> Path:
    """The tiny model warm-started for 60 steps on the test suite's `test.calc` family (one calculator call, then the
    boxed result): cheap to build (about a minute), and good enough that GRPO groups have reward variance."""
    from amrsd_train.config import SFTConfig
    from amrsd_train.sft import warm_start

    out = tmp_path_factory.mktemp("models") / "tiny-calc"
    cfg = SFTConfig(families=["test.calc"], demos_per_family=200, steps=60, batch_size=16, lr=3e-3,
                    output=str(out), progress=False)
    return warm_start(cfg, tasks_dir=TEST_TASKS)
