"""Every registered AMR-SD env: check_env, same-seed determinism, the episode contract, and evaluation."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import amrsd_envs
from amrsd_envs.evaluate import evaluate, pass_at_k
from amrsd_envs.oracle import OraclePolicy
from amrsd_envs.peers import PeerBuffer

ENV_IDS = [e for e in amrsd_envs.ENV_IDS if e != "AMRSD-All-v0"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_episode(env_id):
    def rollout(seed):
        env = gym.make(env_id)
        obs, info = env.reset(seed=seed)
        policy = OraclePolicy(env)
        trace = [(obs, info["task_id"])]
        done = False
        while not done:
            obs, reward, term, trunc, info = env.step(policy(obs, info.get("tools")))
            trace.append((obs, reward, term, trunc))
            done = term or trunc
        env.close()
        return trace

    assert rollout(123) == rollout(123)
    ids = {rollout(s)[0][1] for s in range(6)}
    assert len(ids) > 1, "different seeds should draw different tasks"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_oracle_episode_is_rewarded(env_id):
    env = gym.make(env_id)
    obs, info = env.reset(seed=0)
    assert obs[0]["role"] == "system" and obs[1]["role"] == "user"
    assert info["split"] == "train" and info["task_id"].startswith(info["family"] + "/")
    policy = OraclePolicy(env)
    done, reward = False, 0.0
    while not done:
        obs, reward, term, trunc, info = env.step(policy(obs, info.get("tools")))
        done = term or trunc
    assert term and not trunc and reward == 1.0
    v = info["verification"]
    assert v.correct and v.extracted is not None
    with pytest.raises(RuntimeError, match="reset"):
        env.step("again")
    env.close()


def test_wrong_and_unformatted_answers():
    env = gym.make("AMRSD-Math-v0")
    obs, info = env.reset(seed=1)
    gold = env.unwrapped.task.answer
    obs, reward, term, trunc, info = env.step("I think it is \\boxed{" + gold + " + 1}")
    assert term and reward == 0.0 and not info["verification"].correct
    assert gold not in info["verification"].feedback
    obs, info = env.reset(seed=1)
    obs, reward, term, trunc, info = env.step("no idea, sorry")
    assert reward <= 0.0 and not info["correct"]


def test_reset_options_task_id_family_split():
    env = gym.make("AMRSD-Math-v0")
    base = env.unwrapped
    tid = base.task_ids("test", 1)[0]
    obs, info = env.reset(options={"task_id": tid})
    assert info["task_id"] == tid and info["split"] == "test"
    fam = tid.split("/")[0]
    for s in range(5):
        _, info = env.reset(seed=s, options={"family": fam, "split": "test"})
        assert info["family"] == fam and info["split"] == "test"
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"taskid": tid})
    with pytest.raises(KeyError, match="did you mean"):
        env.reset(options={"family": fam + "x"})


def test_test_split_env_samples_only_test_tasks():
    env = gym.make("AMRSD-Science-v0", split="test")
    for s in range(10):
        _, info = env.reset(seed=s)
        assert info["split"] == "test"


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="split"):
        gym.make("AMRSD-Math-v0", split="dev")
    with pytest.raises(KeyError, match="no family matches"):
        gym.make("AMRSD-Math-v0", families=["science.*"])


def test_module_prefix_make_without_import():
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('amrsd_envs:AMRSD-Math-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "import sys; assert 'torch' not in sys.modules, 'amrsd_envs must not import torch'\n"
        "print(info['task_id'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("math.")


def test_peer_buffer_records_episodes():
    buf = PeerBuffer(per_task=4)
    env = gym.make("AMRSD-Math-v0", peer_buffer=buf)
    obs, info = env.reset(seed=5)
    tid = info["task_id"]
    env.step("\\boxed{" + env.unwrapped.task.answer + "}")
    env.reset(options={"task_id": tid})
    env.step("\\boxed{123456789}")
    eps = buf.episodes(tid)
    assert [e.correct for e in eps] == [True, False]
    assert buf.successful_peer(tid, exclude=[eps[0].episode_id]) is None
    assert buf.successful_peer(tid).answer == env.unwrapped.task.answer
    assert buf.most_common_wrong_answer(tid) == ("123456789", 1)


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_evaluate_oracle_and_callable_policies(tmp_path):
    report = evaluate("AMRSD-Math-v0", "oracle", n_tasks=10, k=1, progress=False)
    assert report.pass_at_1 == 1.0 and report.n_tasks == 10
    assert all(s.pass_at_1 == 1.0 for s in report.per_family.values())
    assert len(report.per_family) == 10  # round-robin covers every family
    bad = evaluate("AMRSD-Math-v0", lambda messages: "\\boxed{0.123456}", n_tasks=10, k=2, progress=False)
    assert bad.pass_at_1 < 0.5 and bad.n_samples == 2
    restored = type(report).model_validate_json(report.model_dump_json())
    assert restored == report


def test_eval_cli_prints_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "amrsd_envs.cli", "--env", "AMRSD-Science-v0", "--policy", "oracle",
         "--n-tasks", "10", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "overall" in out.stdout and "100.0%" in out.stdout
    assert (tmp_path / "r.json").exists()


def test_peer_buffer_persists_and_snapshots(tmp_path):
    db = tmp_path / "peers.sqlite"
    with PeerBuffer(per_task=2, path=db) as buf:
        for k in range(3):
            buf.record("t/1", answer=str(k), correct=k == 1, transcript="x" * 5000, step=k)
        buf.record("t/2", answer="9", correct=False, transcript="y")
    with PeerBuffer(per_task=2, path=db) as again:  # a restarted process sees the same, bounded peers
        assert [e.answer for e in again.episodes("t/1")] == ["1", "2"]
        assert len(again.episodes("t/1")[0].transcript) < 5000
        again.save(tmp_path / "snap.sqlite")
    fresh = PeerBuffer(per_task=2)
    fresh.load(tmp_path / "snap.sqlite")
    assert fresh.successful_peer("t/1").answer == "1" and fresh.most_common_wrong_answer("t/2") == ("9", 1)


def test_peer_buffer_is_thread_safe(tmp_path):
    import threading

    buf = PeerBuffer(per_task=50, path=tmp_path / "p.sqlite")

    def work(w):
        for k in range(100):
            buf.record(f"t/{k % 3}", answer=f"{w}-{k}", correct=k % 2 == 0, transcript="t")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(buf) == 150 and all(len(buf.episodes(f"t/{i}")) == 50 for i in range(3))
    buf.close()
    assert len(PeerBuffer(per_task=50, path=tmp_path / "p.sqlite")) == 150


def _play_oracle(env, seed: int) -> float:
    obs, info = env.reset(seed=seed)
    policy = OraclePolicy(env)
    done, reward = False, 0.0
    while not done:
        obs, reward, term, trunc, info = env.step(policy(obs, info.get("tools")))
        done = term or trunc
    return reward


def test_envs_share_one_sandbox_started_once():
    from amrsd_envs.sandbox import SharedSandbox

    shared = SharedSandbox("local")
    calc = gym.make("AMRSD-ToolUse-v0", families=["tooluse.calc_arith"], sandbox=shared)
    assert _play_oracle(calc, 0) == 1.0
    assert not shared.started, "a family without the python tool must not start a sandbox"
    envs = [gym.make("AMRSD-ToolUse-v0", families=["tooluse.python_compute"], sandbox=shared) for _ in range(3)]
    assert [_play_oracle(env, seed) for seed, env in enumerate(envs)] == [1.0, 1.0, 1.0]
    assert shared.starts == 1 and shared.started
    for env in [calc, *envs]:
        env.close()
    assert shared.started, "env.close() must leave a caller's sandbox running"
    assert shared.run("print(6 * 7)", timeout_s=10).stdout.strip() == "42"
    shared.close()
    assert not shared.started
    with pytest.raises(ValueError, match="valid backends"):
        SharedSandbox("vm")


def test_peer_recording_is_chosen_per_episode_through_reset_options():
    buf = PeerBuffer(per_task=8)
    env = gym.make("AMRSD-Math-v0", peer_buffer=buf)
    _, info = env.reset(seed=1, options={"peer_step": 7})
    tid = info["task_id"]
    env.step("\\boxed{1}")
    env.reset(options={"task_id": tid, "record_peer": False})  # e.g. a held-out evaluation episode
    env.step("\\boxed{2}")
    env.reset(options={"task_id": tid})  # the default again: recorded, with the constructor's step (0)
    env.step("\\boxed{3}")
    assert [(e.answer, e.step) for e in buf.episodes(tid)] == [("1", 7), ("3", 0)]
    with pytest.raises(TypeError, match="record_peer must be a bool"):
        env.reset(options={"record_peer": "no"})
    with pytest.raises(ValueError, match="unknown reset option.*peer_step"):
        env.reset(options={"peer_stepp": 1})
