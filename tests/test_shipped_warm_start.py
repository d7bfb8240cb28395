"""The main job's warm start ships with the package: it is current, intact, found first on a fresh machine, and
never used for other settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from amrsd_train import models, sft
from amrsd_train.config import TrainConfig
from amrsd_train.rollout import ChatTokens

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = ROOT / "configs" / "tiny-amrsd.yaml"
REBUILD = ("rebuild it with `amrsd-train sft --config configs/tiny-amrsd.yaml --ship` (about 35 min on 2 cores), "
           "delete the stale folder under amrsd_train/warm_starts/, and commit both")


def main_job_warm_start() -> sft.SFTConfig:
    return TrainConfig.from_yaml(MAIN_JOB).warm_start


def shipped_folder() -> Path:
    return sft.SHIPPED_DIR / sft.warm_start_folder(main_job_warm_start()).name


def test_the_main_jobs_warm_start_is_shipped_and_nothing_else_is():
    folder = shipped_folder()
    assert models.is_model_dir(folder), (
        f"configs/tiny-amrsd.yaml's warm start ({folder.name}) is not shipped, so the main job would spend tens of "
        f"minutes building it: its settings or sft.WARM_START_VERSION changed; {REBUILD}")
    stale = sorted(p.name for p in sft.SHIPPED_DIR.iterdir() if p.is_dir() and p != folder)
    assert not stale, f"shipped warm starts no config uses: {stale}; delete them"


def test_the_shipped_weights_are_the_recorded_ones():
    folder = shipped_folder()
    record = json.loads((folder / sft.SHIPPED_FILE).read_text())
    assert record["key"] == folder.name.removeprefix("tiny-")
    assert record["warm_start_version"] == sft.WARM_START_VERSION
    assert record["settings"] == main_job_warm_start().model_dump(mode="json", exclude=sft._NOT_RESULT)
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == record["model_sha256"], f"{folder}/model.safetensors is not the file shipped; {REBUILD}"


def test_a_fresh_cache_loads_the_shipped_model_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("AMRSD_CACHE", str(tmp_path))

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped warm start should have been used")

    monkeypatch.setattr(sft, "warm_start", no_build)
    folder = sft.resolve_warm_start(main_job_warm_start())
    assert folder == shipped_folder()
    # it is a working policy: the chat template renders a prompt and the model scores it
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    chat = ChatTokens(tokenizer)
    ids = chat.prompt_ids([{"role": "user", "content": "Compute 17 * 23."}], tools=[])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size) and torch.isfinite(logits).all()


def test_other_settings_or_use_shipped_false_build(tmp_path, monkeypatch):
    monkeypatch.setenv("AMRSD_CACHE", str(tmp_path))
    built: list[str] = []

    def record_build(cfg, tasks_dir=None):
        built.append(cfg.output)
        return Path(cfg.output)

    monkeypatch.setattr(sft, "warm_start", record_build)
    base = main_job_warm_start()
    for cfg, tasks_dir in [(base.model_copy(update={"use_shipped": False}), None),
                           (base.model_copy(update={"reflection_steps": 299}), None),
                           (base, str(ROOT / "tasks"))]:
        expected = sft.warm_start_folder(cfg, tasks_dir)
        assert sft.resolve_warm_start(cfg, tasks_dir) == expected
        assert expected.parent == tmp_path / "models" and expected != shipped_folder()
    assert len(built) == 3


def test_the_cache_comes_before_the_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("AMRSD_CACHE", str(tmp_path))
    cached = sft.warm_start_folder(main_job_warm_start())
    sft.ship_warm_start(main_job_warm_start(), shipped_folder(), None, into=cached.parent)  # a copy, by key
    assert sft.resolve_warm_start(main_job_warm_start()) == cached
    record = json.loads((cached / sft.SHIPPED_FILE).read_text())
    assert record["model_sha256"] == json.loads((shipped_folder() / sft.SHIPPED_FILE).read_text())["model_sha256"]
    assert record["build_seconds"] is None
