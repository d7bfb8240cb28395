"""BFCL v4 ``multi_turn_base`` (``tasks/datasets/bfcl_multi_turn_base.yaml``): the backends as the episode's world,
scripted user turns, BFCL's per-turn check (``bfcl_multi_turn``) and the oracle."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

import amrsd_envs  # noqa: F401  (registers the env ids)
from amrsd_envs.bfcl_multi_turn import parse_call, parse_gold
from amrsd_envs.catalog import load_tasks
from amrsd_envs.oracle import OraclePolicy, oracle_messages
from amrsd_envs.toolcalls import ToolCall, render_tool_calls

FAMILY = "bfcl.multi_turn_base"
# multi_turn_base_0, turn 1: cd(folder='document'), mkdir(dir_name='temp'), mv(source='final_report.pdf', ...)
#                    turn 2: cd(folder='temp'), grep(file_name='final_report.pdf', pattern='budget analysis')
TASK = f"{FAMILY}/multi_turn_base_0"


@pytest.fixture(scope="module")
def catalog():
    return load_tasks(families=[FAMILY])


@pytest.fixture()
def env():
    env = gym.make("AMRSD-BFCL-v0", families=[FAMILY])
    yield env
    env.close()


def _calls(*calls: tuple[str, dict]) -> str:
    return render_tool_calls([ToolCall(name=n, arguments=a) for n, a in calls])


TURN_1 = _calls(("cd", {"folder": "document"}), ("mkdir", {"dir_name": "temp"}),
                ("mv", {"source": "final_report.pdf", "destination": "temp"}))


def _play(env, messages: list[str], task_id: str = TASK):
    """Reset to ``task_id`` and send ``messages``; the last step's result."""
    env.reset(options={"task_id": task_id})
    out = None
    for text in messages:
        out = env.step(text)
        if out[2] or out[3]:
            break
    return out


def test_family_loads_from_the_installed_package(catalog, monkeypatch):
    import socket

    from amrsd_envs.datasets import bfcl_multi_turn

    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("the reader used the network"))
    assert len(bfcl_multi_turn.category_rows()) == 200
    fam = catalog[FAMILY]
    assert len(fam) == 200 and fam.spec.verifier.type == "bfcl_multi_turn"
    task = catalog.get(TASK)
    gold = parse_gold(task.answer)
    assert sorted(gold["involved_classes"]) == ["GorillaFileSystem", "TwitterAPI"] and len(gold["turns"]) == 4
    names = [t["function"]["name"] for t in task.params["tools"]]
    assert "cd" in names and "post_tweet" in names
    assert all(t["function"]["parameters"]["type"] == "object" for t in task.params["tools"])


def test_ground_truth_calls_are_parsed_not_evaluated():
    assert parse_call("sort('final_report.pdf')") == ("sort", ["final_report.pdf"], {})
    assert parse_call("mv(source='a', destination='b')") == ("mv", [], {"source": "a", "destination": "b"})
    assert parse_call("f(x=-1.5, y=[1, 2], z=None)") == ("f", [], {"x": -1.5, "y": [1, 2], "z": None})
    for bad in ("__import__('os').system('true')", "f(x=open('/etc/passwd'))", "a.b(1)"):
        with pytest.raises(ValueError):
            parse_call(bad)


def test_oracle_passes_on_every_task(catalog, env):
    policy = OraclePolicy(env)
    failing = []
    for i in range(len(catalog[FAMILY])):
        task_id = catalog[FAMILY].instance(i).id
        messages, info = env.reset(options={"task_id": task_id})
        tools, done = info["tools"], False
        while not done:
            messages, reward, terminated, truncated, info = env.step(policy(messages, tools))
            done = terminated or truncated
        if not (terminated and reward == 1.0):
            failing.append((task_id, info["verification"]))
    assert not failing


def test_episode_end_to_end_through_gym_make(catalog, env):
    messages, info = env.reset(options={"task_id": TASK})
    assert [m["role"] for m in messages] == ["system", "user"] and "final_report.pdf" in messages[1]["content"]
    assert info["max_turns"] == 40 and any(t["function"]["name"] == "mkdir" for t in info["tools"])
    messages, reward, terminated, truncated, info = env.step(TURN_1)
    tools = messages[-3:]
    assert [m["role"] for m in tools] == ["tool"] * 3 and info["tool_calls"] == 3
    assert json.loads(tools[0]["content"]) == {"current_working_directory": "document"}
    assert not (terminated or truncated) and reward == 0.0
    messages, reward, terminated, truncated, info = env.step("Moved it.")
    assert messages[-1]["role"] == "user" and "budget analysis" in messages[-1]["content"]
    assert info["user_turn"] == 1 and not terminated and reward == 0.0
    script = oracle_messages(env.unwrapped.task, catalog)
    for text in script[2:]:
        messages, reward, terminated, truncated, info = env.step(text)
    assert terminated and not truncated and reward == 1.0 and info["verification"].extracted == "4/4 user turns passed"


@pytest.mark.parametrize("turn_1, feedback", [
    (_calls(("cd", {"folder": "document"}), ("mv", {"source": "final_report.pdf", "destination": "temp"})),
     "state of GorillaFileSystem"),  # mkdir skipped: the file is renamed to temp instead
    (_calls(("cd", {"folder": "document"}), ("mkdir", {"dir_name": "tmp"}),
            ("mv", {"source": "final_report.pdf", "destination": "tmp"})), "state of GorillaFileSystem"),
    ("I will do that.", "no function was called"),
])
def test_a_wrong_turn_fails_the_episode(catalog, env, turn_1, feedback):
    script = oracle_messages(catalog.get(TASK), catalog)
    *_, reward, terminated, _, info = _play(env, [turn_1, "Done.", *script[2:]])
    assert terminated and reward == 0.0
    assert feedback in info["verification"].feedback and "user turn 1" in info["verification"].feedback
    assert "temp" not in info["verification"].feedback


def test_right_state_without_the_needed_result_fails(catalog, env):
    # turn 2 asks for a grep: the state is the same without it (grep reads), but its result was never produced
    script = oracle_messages(catalog.get(TASK), catalog)
    turn_2 = _calls(("cd", {"folder": "temp"}))
    *_, reward, terminated, _, info = _play(env, [TURN_1, "Done.", turn_2, "Done.", *script[4:]])
    assert terminated and reward == 0.0
    assert "user turn 2: a result the request needed was never produced" in info["verification"].feedback
    # the same result produced in an earlier turn counts (BFCL compares with all the results so far)
    early = TURN_1 + "\n" + _calls(("cd", {"folder": "temp"}),
                                   ("grep", {"file_name": "final_report.pdf", "pattern": "budget analysis"}),
                                   ("cd", {"folder": ".."}))
    *_, reward, terminated, _, info = _play(env, [early, "Done.", turn_2, "Done.", *script[4:]])
    assert terminated and reward == 1.0, info["verification"]


def test_tool_errors_are_returned_not_raised(env):
    env.reset(options={"task_id": TASK})
    bad = _calls(("rm_rf", {"path": "/"}), ("cd", {"folder": "document", "force": True}), ("cd", {}),
                 ("__init__", {}), ("_load_scenario", {"scenario": {}})) + "\n<tool_call>{not json</tool_call>"
    messages, reward, terminated, truncated, info = env.step(bad)
    contents = [m["content"] for m in messages if m["role"] == "tool"]
    assert len(contents) == 6 and not (terminated or truncated)
    assert all(c.startswith("Error during execution: ") for c in contents[:5]), contents
    assert "rm_rf" in contents[0] and contents[5].startswith("error: ")
    # a backend's own failure comes back as its result; the episode goes on
    messages, *_ = env.step(_calls(("cd", {"folder": "no_such_dir"})))
    assert "error" in messages[-1]["content"].lower()


def test_max_turns_truncates_between_user_turns(catalog):
    env = gym.make("AMRSD-BFCL-v0", families=[FAMILY], max_turns=2)
    *_, reward, terminated, truncated, info = _play(env, [TURN_1, "Done."])
    assert truncated and not terminated and reward == 0.0 and info["verification"] is None
    env.close()
