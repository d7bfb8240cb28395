"""Agreement of ``bfcl_multi_turn`` with BFCL's own multi-turn checker, on oracle and mutated trajectories.

For every ``bfcl.multi_turn_base`` task: the oracle trajectory and a few mutations of it (a call dropped, every call
of a turn dropped, a string argument changed, a turn's calls run twice). Each trajectory is played through
``AMRSD-BFCL-v0`` (one message per step, a reply without calls ending each turn) for our verdict, and sent to
BFCL's ``multi_turn_checker`` in the BFCL venv (``bench/.venv-bfcl``, the same file run with ``--worker``) as
decoded call strings, for theirs. Prints the counts and every disagreement.

    .venv/bin/python bench/bfcl_multi_turn_agreement.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

BFCL_PYTHON = Path(__file__).parent / ".venv-bfcl" / "bin" / "python"
FAMILY = "bfcl.multi_turn_base"

Trajectory = list[list[list[tuple[str, dict]]]]  # turn -> step -> calls (name, keyword arguments)


def oracle_trajectory(task) -> Trajectory:
    from amrsd_envs.bfcl_multi_turn import oracle_messages
    from amrsd_envs.toolcalls import parse_tool_calls

    turns: Trajectory = [[]]
    for text in oracle_messages(task.answer):
        calls = parse_tool_calls(text).calls
        if calls:
            turns[-1].append([(c.name, dict(c.arguments)) for c in calls])
        else:
            turns.append([])
    return turns[:-1]


def mutations(traj: Trajectory, rng: random.Random) -> dict[str, Trajectory]:
    """Named variants of ``traj`` (only those that apply to it)."""
    out: dict[str, Trajectory] = {"oracle": traj}
    full = [k for k, turn in enumerate(traj) if turn]
    if not full:
        return out
    k = rng.choice(full)
    calls = [c for step in traj[k] for c in step]
    j = rng.randrange(len(calls))
    out["drop_call"] = _with_turn(traj, k, [calls[:j] + calls[j + 1:]])
    out["drop_turn"] = _with_turn(traj, k, [])
    out["repeat_turn"] = _with_turn(traj, k, [calls, calls])
    strings = [(i, p) for i, (_, args) in enumerate(calls) for p, v in args.items() if isinstance(v, str)]
    if strings:
        i, p = rng.choice(strings)
        changed = [(n, dict(a)) for n, a in calls]
        changed[i][1][p] = changed[i][1][p] + "_x"
        out["wrong_string"] = _with_turn(traj, k, [changed])
    return out


def _with_turn(traj: Trajectory, k: int, steps: list[list[tuple[str, dict]]]) -> Trajectory:
    return [([s for s in steps if s] if i == k else turn) for i, turn in enumerate(traj)]


def our_verdict(env, task_id: str, traj: Trajectory) -> bool:
    from amrsd_envs.toolcalls import ToolCall, render_tool_calls

    env.reset(options={"task_id": task_id})
    reward, done = 0.0, False
    for turn in traj:
        for step in turn:
            _, reward, term, trunc, _ = env.step(render_tool_calls([ToolCall(n, a) for n, a in step]))
            if term or trunc:
                return False
        _, reward, term, trunc, _ = env.step("Done.")
        done = term or trunc
    return done and reward == 1.0


def bfcl_verdicts(requests: list[dict]) -> list[dict]:
    proc = subprocess.run([str(BFCL_PYTHON), __file__, "--worker"], input="\n".join(map(json.dumps, requests)),
                          capture_output=True, text=True, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def worker() -> None:
    """In BFCL's venv: one verdict of ``multi_turn_checker`` per request line (``id``, ``turns`` of decoded
    call strings), read against this venv's own BFCL data."""
    from importlib import resources

    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    def lines(rel: str) -> dict[str, dict]:
        text = resources.files("bfcl_eval").joinpath("data").joinpath(rel).read_text(encoding="utf-8")
        return {r["id"]: r for r in map(json.loads, filter(str.strip, text.splitlines()))}

    tasks = lines("BFCL_v4_multi_turn_base.json")
    truth = lines("possible_answer/BFCL_v4_multi_turn_base.json")
    for n, line in enumerate(filter(str.strip, sys.stdin)):
        req = json.loads(line)
        result = multi_turn_checker(req["turns"], truth[req["id"]]["ground_truth"], tasks[req["id"]],
                                    "multi_turn_base", f"agreement{n}")  # a fresh name: BFCL keeps instances
        print(json.dumps({"valid": result["valid"], "error_type": result.get("error_type")}), flush=True)


def call_string(name: str, args: dict) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="Only the first N tasks.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()

    import gymnasium as gym

    import amrsd_envs  # noqa: F401

    env = gym.make("AMRSD-BFCL-v0", families=[FAMILY])
    fam = env.unwrapped.catalog[FAMILY]
    rows, requests = [], []
    for i in range(min(args.limit or len(fam), len(fam))):
        task = fam.instance(i)
        bfcl_id = task.id.split("/", 1)[1]
        for kind, traj in mutations(oracle_trajectory(task), random.Random(i)).items():
            rows.append({"task": bfcl_id, "kind": kind, "ours": our_verdict(env, task.id, traj)})
            requests.append({"id": bfcl_id, "turns": [[[call_string(n, a) for n, a in step] for step in turn]
                                                      for turn in traj]})
    env.close()
    for row, theirs in zip(rows, bfcl_verdicts(requests), strict=True):
        row["bfcl"], row["bfcl_error_type"] = theirs["valid"], theirs["error_type"]
    kinds = sorted({r["kind"] for r in rows})
    print(f"{len(rows)} trajectories over {len({r['task'] for r in rows})} tasks")
    print(f"{'kind':<14}{'n':>6}{'agree':>7}{'ours ok':>9}{'BFCL ok':>9}")
    for kind in kinds:
        sub = [r for r in rows if r["kind"] == kind]
        print(f"{kind:<14}{len(sub):>6}{sum(r['ours'] == r['bfcl'] for r in sub):>7}"
              f"{sum(r['ours'] for r in sub):>9}{sum(r['bfcl'] for r in sub):>9}")
    for r in rows:
        if r["ours"] != r["bfcl"]:
            print("disagree:", r)


if __name__ == "__main__":
    main()
