"""Resuming refuses a config change that breaks exact resume, and names the fields (amrsd_train.checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amrsd_train.checkpoint import MARKER, RESUME_SAFE_FIELDS, check_resume_config, config_changes
from amrsd_train.config import TrainConfig


def _checkpoint(tmp_path: Path, cfg: TrainConfig) -> Path:
    ckpt = tmp_path / "step_000002"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"step": 2, "config": cfg.model_dump(mode="json"), "best": {}}))
    (ckpt / MARKER).touch()
    return ckpt


def test_config_changes_are_dotted_and_cover_both_sides():
    a = {"lr": 1e-3, "amrsd": {"beta_max": 1.0, "tau_pos": 0.5}, "gone": 1}
    b = {"lr": 1e-3, "amrsd": {"beta_max": 2.0, "tau_pos": 0.5}, "new": 2}
    assert config_changes(a, b) == {"amrsd.beta_max": (1.0, 2.0), "gone": (1, "<absent>"), "new": ("<absent>", 2)}
    assert config_changes(a, a) == {}


def test_an_unchanged_config_resumes(tmp_path):
    cfg = TrainConfig()
    check_resume_config(_checkpoint(tmp_path, cfg), cfg.model_dump(mode="json"))


def test_reporting_fields_may_change(tmp_path):
    cfg = TrainConfig()
    new = cfg.with_overrides(["output_dir=elsewhere", "progress=false", "checkpoint_every=3", "eval_every=5",
                              "keep_checkpoints=4", "tensorboard=true"])
    check_resume_config(_checkpoint(tmp_path, cfg), new.model_dump(mode="json"))
    assert {"output_dir", "progress", "checkpoint_every"} <= RESUME_SAFE_FIELDS


def test_a_breaking_change_is_refused_naming_every_field(tmp_path):
    cfg = TrainConfig()
    new = cfg.with_overrides(["lr=3e-5", "amrsd.beta_max=2.0", "seed=7"])
    with pytest.raises(ValueError) as exc:
        check_resume_config(_checkpoint(tmp_path, cfg), new.model_dump(mode="json"))
    msg = str(exc.value)
    assert "step_000002" in msg
    for line in ("lr: 1e-05 in the checkpoint, 3e-05 now", "amrsd.beta_max: 1.0 in the checkpoint, 2.0 now",
                 "seed: 0 in the checkpoint, 7 now"):
        assert line in msg
    assert "resume_allow_changes=[amrsd.beta_max, lr, seed]" in msg


def test_resume_allow_changes_accepts_named_fields_and_sections(tmp_path):
    cfg = TrainConfig()
    ckpt = _checkpoint(tmp_path, cfg)
    new = cfg.with_overrides(["total_steps=80", "amrsd.beta_max=2.0", "amrsd.tau_pos=0.1"])
    ok = new.model_copy(update={"resume_allow_changes": ["total_steps", "amrsd"]})
    check_resume_config(ckpt, ok.model_dump(mode="json"))
    partial = new.model_copy(update={"resume_allow_changes": ["total_steps", "amrsd.beta_max"]})
    with pytest.raises(ValueError, match="amrsd.tau_pos") as exc:
        check_resume_config(ckpt, partial.model_dump(mode="json"))
    assert "total_steps" not in str(exc.value).split("now")[0]
