"""The trainer on the real tiny model: token identity of rollouts, a GRPO smoke run, kill-and-resume, config errors.

One warm-started tiny model (SFT on oracle calculator demonstrations of tests/data/tasks) is built per session and
shared; it makes real multi-turn tool calls, so the rollout tests exercise tool turns.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from amrsd_envs.catalog import load_tasks
from amrsd_train.checkpoint import MARKER, latest_checkpoint, list_checkpoints
from amrsd_train.config import SFTConfig, TrainConfig
from amrsd_train.engines.base import SamplingParams
from amrsd_train.engines.hf import HFEngine
from amrsd_train.rollout import ChatTokens, run_group_rollouts
from amrsd_train.sft import collect_demonstrations, tokenize_demo, warm_start

TASKS = str(Path(__file__).parent / "data" / "tasks")
pytestmark = pytest.mark.slow


def base_config(tmp_path: Path, model: Path, **kw) -> TrainConfig:
    data = dict(
        model=str(model), tasks_dir=TASKS, envs=["AMRSD-ToolUse-v0"], families=["test.calc"], group_size=4,
        tasks_per_step=2, mini_batches=2, micro_batch_size=4, lr=1e-3, max_new_tokens=32, max_total_tokens=256,
        total_steps=3, eval_every=0, eval_tasks=4, checkpoint_every=1, output_dir=str(tmp_path / "run"),
        progress=False, seed=0, threads=1,
    )
    data.update(kw)
    return TrainConfig.validated(data)


def test_incremental_tokens_match_whole_conversation_render(tiny_calc):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_calc)
    chat = ChatTokens(tok)
    demos = collect_demonstrations(load_tasks(TASKS), per_family=5, seed=0)
    for messages, tools in demos:
        assert sum(m["role"] == "assistant" for m in messages) == 2  # a tool turn and the final answer
        ids, mask = tokenize_demo(chat, messages, tools)
        whole = chat.render(messages, tools, gen_prompt=False)
        # the sequence built turn by turn decodes to exactly the template's rendering of the whole conversation
        assert tok.decode(ids, skip_special_tokens=False) + "\n" == whole
        trained = tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
        assert trained == "".join(m["content"] for m in messages if m["role"] == "assistant") + "<|im_end|>"


class RecordingEngine:
    """The real HF engine, remembering every completion it returned."""

    def __init__(self, engine):
        self.engine, self.tokenizer, self.completions = engine, engine.tokenizer, []

    def generate(self, prompts, params):
        out = self.engine.generate(prompts, params)
        self.completions.extend(c for row in out for c in row)
        return out


def test_rollout_trains_exactly_the_sampled_tokens(tiny_calc):
    engine = RecordingEngine(HFEngine(str(tiny_calc)))
    catalog = load_tasks(TASKS)
    envs = [gym.make("AMRSD-All-v0", tasks=catalog) for _ in range(8)]
    task_ids = [catalog["test.calc"].instance(i).id for i in range(2)]
    params = SamplingParams(temperature=1.0, max_new_tokens=32, stop_strings=("</tool_call>",))
    trajs, stats = run_group_rollouts(engine, envs, task_ids, 4, params, max_total_tokens=256, seed=3)
    assert len(trajs) == 8 and [t.group_id for t in trajs] == [0] * 4 + [1] * 4
    assert any(t.num_turns >= 2 for t in trajs), "the warm-started model should make tool calls"
    sampled = [c.token_ids for c in engine.completions]
    lp = [c.logprobs for c in engine.completions]
    for t in trajs:
        assert len(t.input_ids) == len(t.loss_mask) == len(t.turn_ids) == len(t.old_logprobs)
        # split the masked ids into turns and match them, in order, with completions the engine returned
        for turn in range(t.num_turns):
            ids = [i for i, tid in zip(t.input_ids, t.turn_ids) if tid == turn]
            lps = [x for x, tid in zip(t.old_logprobs, t.turn_ids) if tid == turn]
            k = sampled.index(ids)
            assert lps == lp[k]
        assert all((m == 1) == (tid >= 0) for m, tid in zip(t.loss_mask, t.turn_ids))
        if t.num_turns >= 2 and not t.truncated:
            assert any(m["role"] == "tool" for m in t.messages)
    # the old logprobs stored from sampling equal a fresh scoring pass of the same ids
    scored = engine.engine.score([t.input_ids for t in trajs], [t.loss_mask for t in trajs])
    for t, s in zip(trajs, scored):
        masked = torch.tensor(t.loss_mask, dtype=torch.bool)
        assert torch.allclose(s[masked], torch.tensor(t.old_logprobs)[masked], atol=1e-4)
    for e in envs:
        e.close()


def test_grpo_smoke_parameters_change_and_outputs_written(tiny_calc, tmp_path):
    from transformers import AutoModelForCausalLM

    from amrsd_train import run

    before = AutoModelForCausalLM.from_pretrained(tiny_calc).state_dict()
    cfg = base_config(tmp_path, tiny_calc, total_steps=2, checkpoint_every=0, temperature=1.5, tasks_per_step=4,
                      algorithm="grpo")
    result = run(cfg)
    rows = [json.loads(l) for l in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert max(r["train/groups_with_signal"] for r in rows[1:]) > 0, "no group had differing rewards"
    after = AutoModelForCausalLM.from_pretrained(result.checkpoint / "model").state_dict()
    changed = sum(not torch.equal(before[k], after[k]) for k in before)
    assert changed > len(before) // 2
    assert {"train/reward_mean", "train/pass_rate", "actor/pg_clipfrac", "actor/grad_norm", "time/generate_s",
            "actor/entropy"} <= set(rows[1])
    assert "eval/pass@1" in rows[0] and "eval/pass@1" in rows[-1]
    assert result.plot is not None and result.plot.stat().st_size > 10_000
    assert result.eval_before is not None and 0.0 <= result.eval_after <= 1.0


def test_cli_prints_held_out_table_per_family(tiny_calc, tmp_path, capsys):
    from amrsd_train.run import main

    cfg = base_config(tmp_path, tiny_calc, total_steps=1, checkpoint_every=0, families=["test.calc", "test.calc_sub"],
                      eval_tasks=4, eval_k=2, eval_temperature=1.0)
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert main(["--config", str(tmp_path / "c.yaml")]) == 0
    table = capsys.readouterr().out
    assert "held-out test split, 4 tasks, 2 samples each at T=1.0" in table
    for key in ("pass@1", "pass@2", "pass@1/test.calc", "pass@1/test.calc_sub"):
        assert any(line.split()[:1] == [key] for line in table.splitlines()), (key, table)
    rows = _rows(Path(cfg.output_dir))
    assert {"eval/pass@1/test.calc", "eval/pass@1/test.calc_sub"} <= set(rows[0])
    assert rows[1].keys() >= {k for k in rows[0] if k.startswith("eval/")}  # every eval metric at the end too


def _train_subprocess(cfg: TrainConfig, log: Path) -> subprocess.Popen:
    cfg_path = log.with_suffix(".yaml")
    cfg_path.write_text(cfg.to_yaml())
    return subprocess.Popen([sys.executable, "-m", "amrsd_train", "--config", str(cfg_path)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r for r in rows}


def test_kill_and_resume_matches_uninterrupted_run(tiny_calc, tmp_path):
    steps = 4
    straight = base_config(tmp_path / "a", tiny_calc, total_steps=steps)
    p = _train_subprocess(straight, tmp_path / "a.log")
    assert p.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()[-3000:]

    killed = base_config(tmp_path / "b", tiny_calc, total_steps=steps)
    ckpts = Path(killed.output_dir) / "checkpoints"
    p = _train_subprocess(killed, tmp_path / "b.log")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and not (ckpts / "step_000002" / MARKER).exists():
        if p.poll() is not None:
            pytest.fail("the run ended before it could be killed:\n" + (tmp_path / "b.log").read_text()[-3000:])
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # a half-written checkpoint (as a kill during save leaves it) must never be picked up
    (ckpts / ".tmp-step_000003").mkdir(exist_ok=True)
    (ckpts / ".tmp-step_000003" / "trainer.pt").write_bytes(b"partial")
    (ckpts / "step_000009").mkdir()  # no COMPLETE marker
    assert latest_checkpoint(ckpts).name in ("step_000002", "step_000003")
    resumed_from = latest_checkpoint(ckpts).name

    p = _train_subprocess(killed, tmp_path / "c.log")
    assert p.wait(timeout=900) == 0, (tmp_path / "c.log").read_text()[-3000:]
    a, b = _rows(Path(straight.output_dir)), _rows(Path(killed.output_dir))
    assert sorted(b) == sorted(a) == list(range(steps + 1))
    first_resumed = int(resumed_from.split("_")[1]) + 1
    for step in range(first_resumed, steps + 1):
        for key in ("train/reward_mean", "train/pass_rate", "actor/loss", "actor/pg_clipfrac", "train/response_length"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)
    assert [c.name for c in list_checkpoints(ckpts)][-1] == f"step_{steps:06d}"

    # resuming with a changed config is refused before anything loads, naming the fields; an accepted change runs
    from amrsd_train import run

    with pytest.raises(ValueError, match=r"(?s)break exact resume.*\blr: 0\.001 in the checkpoint, 0\.002 now"):
        run(base_config(tmp_path / "b", tiny_calc, total_steps=steps, lr=2e-3))
    longer = base_config(tmp_path / "b", tiny_calc, total_steps=steps + 1, resume_allow_changes=["total_steps"])
    run(longer)
    assert sorted(_rows(Path(killed.output_dir))) == list(range(steps + 2))


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(latest_checkpoint(run_dir / "checkpoints") / "model").state_dict()


def test_amrsd_with_beta_zero_is_the_grpo_run_bit_for_bit(tiny_calc, tmp_path):
    """The whole AMR-SD path runs (reflection context, teacher scoring, CIG, open gates) and with beta = 0 the run is
    the GRPO run of the same seed: same metrics, same final weights, bit for bit. A positive beta changes them."""
    from amrsd_train import run

    common = dict(total_steps=2, checkpoint_every=0, temperature=1.5, tasks_per_step=4, mini_batches=1)
    # raw context (the reference) gives every group a teacher context, so CIG is non-zero and gates open
    amrsd_kw = dict(algorithm="amrsd", reflection={"source": "raw", "skip_solved_groups": False},
                    amrsd={"tau_pos": 0.0, "tau_neg": 0.0})
    grpo = run(base_config(tmp_path / "grpo", tiny_calc, algorithm="grpo", **common))
    zero = run(base_config(tmp_path / "zero", tiny_calc, **amrsd_kw, **common).with_overrides(["amrsd.beta_max=0"]))
    full = run(base_config(tmp_path / "full", tiny_calc, **amrsd_kw, **common).with_overrides(
        ["amrsd.beta_max=2", "amrsd.anneal=false"]))
    g, z, f = (_rows(r.output_dir) for r in (grpo, zero, full))
    assert max(z[s]["amrsd/gate_frac"] for s in (1, 2)) > 0, "no gate opened: the equality would be vacuous"
    for step in (1, 2):
        for key in ("train/reward_mean", "actor/loss", "actor/grad_norm", "actor/entropy", "train/token_adv_abs_mean"):
            assert z[step][key] == g[step][key], (step, key)
    a, b = _state(grpo.output_dir), _state(zero.output_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _state(full.output_dir)
    assert f[1]["train/token_adv_abs_mean"] > g[1]["train/token_adv_abs_mean"]
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("algorithm", ["amrsd", "raw_sd", "rlsd", "gcpo", "entropy_realloc"])
def test_every_algorithm_trains_and_logs_its_diagnostics(tiny_calc, tmp_path, algorithm):
    from transformers import AutoModelForCausalLM

    from amrsd_train import run

    before = AutoModelForCausalLM.from_pretrained(tiny_calc).state_dict()
    result = run(base_config(tmp_path, tiny_calc, algorithm=algorithm, total_steps=1, checkpoint_every=0,
                             temperature=1.5, tasks_per_step=4, mini_batches=1,
                             reflection={"skip_solved_groups": False}))
    row = _rows(result.output_dir)[1]
    after = AutoModelForCausalLM.from_pretrained(result.checkpoint / "model").state_dict()
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2
    expected = {"amrsd": {"reflect/accept_rate", "reflect/leak_rate", "reflect/hint_tokens", "amrsd/gate_frac",
                          "amrsd/cig_mean_pos", "amrsd/cig_mean_neg", "amrsd/beta"},
                "raw_sd": {"sd/divergence", "actor/aux_loss"}, "rlsd": {"rlsd/lambda", "rlsd/weight_mean"},
                "gcpo": {"gcpo/weight_max"}, "entropy_realloc": {"entropy_realloc/entropy_mean"}}[algorithm]
    assert expected <= set(row), expected - set(row)
    assert {"time/generate_s", "time/verify_s", "time/credit_s", "time/update_s"} <= set(row)
    if algorithm == "amrsd":
        assert row["reflect/samples"] >= row["reflect/jobs"] > 0  # the policy really wrote hints (and they were vetted)
    # what the inspect page needs is kept, and the page renders from it
    from amrsd_train.inspect_page import write_inspect_page

    page = write_inspect_page(result.output_dir)
    assert page.stat().st_size > 5_000 and "<html" in page.read_text()


@pytest.mark.slow
def test_stop_strings_end_the_assistant_turns_they_configure(tiny_calc, tmp_path):
    """`stop_strings` reaches generation: with "calculator" (which every tool call of test.calc names) each first
    turn ends at it, cutting the call; the default ends it at the first `</tool_call>`."""
    from amrsd_train import run

    def first_turns(run_dir: Path) -> list[str]:
        groups = json.loads((run_dir / "inspect" / "step_000001.json").read_text())["groups"]
        return ["".join(t[0] for t in r["tokens"] if t[1] == "assistant" and t[2] == 0)
                for g in groups for r in g["rollouts"]]

    common = dict(algorithm="grpo", total_steps=1, checkpoint_every=0)
    cut = run(base_config(tmp_path, tiny_calc, stop_strings=["calculator"], output_dir=str(tmp_path / "cut"), **common))
    default = run(base_config(tmp_path, tiny_calc, output_dir=str(tmp_path / "default"), **common))
    cut_turns, default_turns = first_turns(cut.output_dir), first_turns(default.output_dir)
    # a stop string may end inside a token: the turn runs to the end of that token, a few characters at most
    calling = [t for t in cut_turns if "calculator" in t]
    assert len(calling) > len(cut_turns) // 2, cut_turns
    assert all(len(t.split("calculator", 1)[1]) <= 3 for t in calling), calling
    assert not any("</tool_call>" in t for t in cut_turns)
    assert sum(t.endswith("</tool_call>") for t in default_turns) > len(default_turns) // 2, default_turns
    with pytest.raises(ValueError, match="stop_strings"):
        TrainConfig.validated({"stop_strings": [""]})


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="did you mean lr"):
        TrainConfig.validated({"lrr": 1e-4})
    with pytest.raises(ValueError, match="warm_start.stepz: unknown key; did you mean steps"):
        TrainConfig.validated({"warm_start": {"stepz": 3}})
    with pytest.raises(ValueError, match="not divisible by mini_batches"):
        TrainConfig.validated({"group_size": 3, "tasks_per_step": 1, "mini_batches": 2})
    with pytest.raises(ValueError, match="group_size >= 2"):
        TrainConfig.validated({"group_size": 1})
    p = tmp_path / "c.yaml"
    p.write_text("model: tiny\ntotal_steps: 3\n")
    cfg = TrainConfig.from_yaml(p, ["lr=3e-5", "families=[a.b, c.*]"])
    assert cfg.lr == 3e-5 and cfg.families == ["a.b", "c.*"] and cfg.total_steps == 3
    with pytest.raises(ValueError, match="unknown config key 'totl_steps'.*total_steps"):
        TrainConfig.from_yaml(p, ["totl_steps=3"])
    # dotted keys reach nested sections; the other fields of the section keep their file/default values
    p.write_text("model: tiny\nwarm_start: {steps: 7, families: [a.b]}\n")
    cfg = TrainConfig.from_yaml(p, ["warm_start.lr=7e-4", "warm_start.lr_schedule=constant"])
    assert (cfg.warm_start.lr, cfg.warm_start.lr_schedule, cfg.warm_start.steps) == (7e-4, "constant", 7)
    assert cfg.warm_start.families == ["a.b"]
    with pytest.raises(ValueError, match="'stepz' in section 'warm_start'.*did you mean steps"):
        TrainConfig.from_yaml(p, ["warm_start.stepz=3"])
    with pytest.raises(ValueError, match="'lr' is not a section"):
        TrainConfig.from_yaml(p, ["lr.peak=3"])
    with pytest.raises(ValueError, match="warm_start.lr_schedule"):
        TrainConfig.from_yaml(p, ["warm_start.lr_schedule=sometimes"])
    p.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="YAML syntax error"):
        TrainConfig.from_yaml(p)


def test_cli_rejects_bad_config_before_loading_a_model(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: tiny\nalgorithm: ppo\n")
    out = subprocess.run([sys.executable, "-m", "amrsd_train", "--config", str(p)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "algorithm" in out.stderr and "grpo" in out.stderr
    assert "RuntimeWarning" not in out.stderr  # `-m amrsd_train` (the package's __main__), not `-m amrsd_train.run`


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = TrainConfig.from_yaml(path)
    assert cfg.model in ("tiny", "smollm2-135m") and cfg.total_steps >= 1


def test_kl_term_pulls_the_policy_back_to_the_reference(tmp_path):
    """The k3 penalty, optimised alone on the real tiny model, moves a perturbed policy toward its frozen copy."""
    import copy

    from transformers import AutoModelForCausalLM

    from amrsd_train.losses import kl_penalty
    from amrsd_train.models import build_tiny_model

    folder = build_tiny_model(tmp_path / "m", ["What is 2 + 2? The answer is 4."] * 50, seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ref = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    ids = torch.randint(4, model.config.vocab_size, (4, 32), generator=gen)

    def logp(m):
        logits = m(input_ids=ids).logits[:, :-1].float()
        return logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - torch.logsumexp(logits, -1)

    with torch.no_grad():
        ref_logp = logp(ref)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = kl_penalty(logp(model), ref_logp, "k3").mean()
    for _ in range(20):
        kl = kl_penalty(logp(model), ref_logp, "k3").mean()
        opt.zero_grad()
        kl.backward()
        opt.step()
    last = kl_penalty(logp(model), ref_logp, "k3").mean()
    assert first.item() > 0 and last.item() < 0.7 * first.item()


def test_every_config_field_is_documented():
    from amrsd_train.config import SFTConfig, config_reference_markdown

    docs = config_reference_markdown()
    for model, prefix in ((TrainConfig, ""), (SFTConfig, "warm_start.")):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert f"`{prefix}{name}`" in docs


def test_trainer_envs_share_one_unstarted_sandbox(tmp_path):
    from amrsd_envs.peers import PeerBuffer
    from amrsd_train.trainer import load_catalog, make_envs

    cfg = base_config(tmp_path, Path(TASKS), tasks_per_step=3, group_size=4, eval_tasks=2, eval_k=2,
                      eval_temperature=1.0)
    envs, sandbox = make_envs(cfg, load_catalog(cfg), PeerBuffer())
    assert len(envs) == 12 and not sandbox.started
    assert all(env.unwrapped._get_sandbox() is sandbox for env in envs)
    for env in envs:
        env.close()
    sandbox.close()


def test_sft_stops_at_the_loss_target(tmp_path):
    from amrsd_train.sft import STOP_WINDOW

    cfg = SFTConfig(families=["test.calc"], demos_per_family=50, steps=400, batch_size=8, lr=3e-3, stop_at_loss=1.5,
                    output=str(tmp_path / "m"), progress=False, threads=1)
    meta = json.loads((warm_start(cfg, tasks_dir=TASKS) / "amrsd_model.json").read_text())
    steps = int(re.search(r"sft (\d+) steps", meta["source"]).group(1))
    assert STOP_WINDOW <= steps < 400, meta["source"]


def test_sft_cli_rejects_unknown_and_malformed_overrides(capsys):
    from amrsd_train.run import main

    assert main(["sft", "stepz=3"]) == 2
    assert "unknown config key 'stepz'" in capsys.readouterr().err
    assert main(["sft", "steps"]) == 2
    assert "is not key=value" in capsys.readouterr().err
    assert main(["sft", "steps=0"]) == 2
    err = capsys.readouterr().err
    assert "invalid SFT config (overrides):\n  - steps: Input should be greater than or equal to 1" in err
