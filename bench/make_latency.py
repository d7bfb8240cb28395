"""Making an env and starting an episode: how long ``gym.make`` and an oracle episode take.

Rows, all measured in one run:

- ``first gym.make``: in a fresh interpreter, ``gym.make("AMRSD-ToolUse-v0", families=[FAMILY])`` after
  ``import gymnasium, amrsd_envs`` (which is lazy); it includes importing the catalog (sympy, pydantic), reading
  the ``id:`` lines of every task file, parsing and sample-validating the one family asked for;
- ``later gym.make``: the median of 20 more calls in the same interpreter (files unchanged: nothing is parsed);
- ``amrsd-tasks list``: wall time of the command line (a fresh interpreter that loads and validates all families);
- the peer, ``old path``: what every ``gym.make`` did before the parse cache and the family filter, run through the
  same public functions with both switched off: :func:`amrsd_envs.spec.clear_parse_cache` before each call, the
  pure-Python PyYAML loader (``spec.YAML_LOADER = yaml.SafeLoader``), and ``load_tasks()`` of every file. It is
  measured in a fresh interpreter (first call, with the same imports as a first ``gym.make``) and as the median of
  3 further calls. The HTTP families' catalogue snapshots are JSON files now, so this peer parses less YAML than
  the code before the change did;
- ``oracle episode``: per tool-use family, one env, the median wall time of ``reset`` and of a whole episode
  (reset + the oracle's steps) over ``--episodes`` seeds, after one warm-up episode. Each seed draws a new instance,
  so an episode's time includes building its instance.

Wall times depend on what else runs on the machine: the header prints ``nproc``, the CPU model and the load
average before and after, and the make rows print the CPU time of the measuring process next to the wall time.

Usage::

    python bench/make_latency.py
    python bench/make_latency.py --episodes 5 --family tooluse.calc_arith
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_FAMILY = "tooluse.calc_arith"
LATER_MAKES = 20


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clock()
    return {"wall_s": wall - start[0], "cpu_s": cpu - start[1]}


def child_make(family: str) -> dict:
    """First and later ``gym.make`` in this (fresh) interpreter."""
    import gymnasium as gym

    import amrsd_envs  # noqa: F401

    start = _clock()
    gym.make("AMRSD-ToolUse-v0", families=[family]).close()
    first = _since(start)
    later = []
    for _ in range(LATER_MAKES):
        start = _clock()
        gym.make("AMRSD-ToolUse-v0", families=[family]).close()
        later.append(_since(start))
    return {"first": first, "later": _median(later)}


def child_old_path() -> dict:
    """``load_tasks()`` of every file, uncached, with the pure-Python YAML loader: the work of an old gym.make.

    The first run counts the same imports as a first ``gym.make`` (the catalog, sympy, pydantic, verifiers)."""
    import gymnasium  # noqa: F401
    import yaml

    import amrsd_envs  # noqa: F401

    runs = []
    for _ in range(4):
        start = _clock()
        from amrsd_envs import spec
        from amrsd_envs.catalog import load_tasks

        spec.YAML_LOADER = yaml.SafeLoader
        spec.clear_parse_cache()
        n = len(load_tasks())
        runs.append(_since(start))
    return {"first": runs[0], "later": _median(runs[1:]), "families": n}


def child_episodes(episodes: int) -> dict:
    """Median reset and whole-episode wall time of the oracle, per tool-use family."""
    import gymnasium as gym

    import amrsd_envs  # noqa: F401
    from amrsd_envs.catalog import load_tasks
    from amrsd_envs.oracle import OraclePolicy

    out = {}
    for fam in sorted(f.id for f in load_tasks(domain="tooluse")):
        env = gym.make("AMRSD-ToolUse-v0", families=[fam])
        policy = OraclePolicy(env)
        resets, totals, rewards = [], [], []
        for seed in range(episodes + 1):
            t0 = time.perf_counter()
            obs, info = env.reset(seed=seed)
            t1 = time.perf_counter()
            tools, done, reward = info["tools"], False, 0.0
            while not done:
                obs, reward, term, trunc, info = env.step(policy(obs, tools))
                done = term or trunc
            t2 = time.perf_counter()
            if seed > 0:  # seed 0 warms up (imports, the sandbox, the first service)
                resets.append(t1 - t0)
                totals.append(t2 - t0)
                rewards.append(reward)
        env.close()
        out[fam] = {"reset_s": statistics.median(resets), "episode_s": statistics.median(totals),
                    "solved": sum(r == 1.0 for r in rewards) / len(rewards)}
    return out


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _run_child(*args: str) -> dict:
    """Run this script as ``--child ...`` in a fresh interpreter; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tasks_list_wall() -> float:
    exe = Path(sys.executable).parent / "amrsd-tasks"
    cmd = [str(exe), "list"] if exe.exists() else [
        sys.executable, "-c", "import sys; from amrsd_envs.cli import tasks_main; sys.exit(tasks_main(['list']))"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"amrsd-tasks list failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return wall


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: nproc={os.cpu_count()}, {model}, Python {platform.python_version()}"


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _ms(x: float) -> str:
    return f"{x * 1000:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default=DEFAULT_FAMILY, help="the family gym.make asks for")
    parser.add_argument("--episodes", type=int, default=5, help="timed oracle episodes per tool-use family")
    parser.add_argument("--skip-episodes", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind = args.child[0]
        result = {"make": lambda: child_make(args.child[1]), "old": child_old_path,
                  "episodes": lambda: child_episodes(int(args.child[1]))}[kind]()
        print(json.dumps(result))
        return

    print(_machine())
    print(f"before: {_load()}")
    make = _run_child("make", args.family)
    old = _run_child("old")
    list_wall = _tasks_list_wall()
    print(f"\ngym.make('AMRSD-ToolUse-v0', families=['{args.family}'])        wall        cpu")
    rows = [
        ("first gym.make (fresh interpreter)", make["first"]),
        (f"later gym.make (median of {LATER_MAKES})", make["later"]),
        (f"old path, first ({old['families']} files, pure-Python YAML, no cache)", old["first"]),
        ("old path, later (median of 3)", old["later"]),
    ]
    for name, r in rows:
        print(f"  {name:<62} {_ms(r['wall_s'])} {_ms(r['cpu_s'])}")
    print(f"  {'amrsd-tasks list (command line, wall)':<62} {_ms(list_wall)}")
    print(f"  ratio old/new, first make:  {old['first']['wall_s'] / make['first']['wall_s']:6.1f}x wall")
    print(f"  ratio old/new, later make:  {old['later']['wall_s'] / make['later']['wall_s']:6.1f}x wall")
    if not args.skip_episodes:
        episodes = _run_child("episodes", str(args.episodes))
        print(f"\noracle episodes, median of {args.episodes} per family (after one warm-up)")
        print(f"  {'family':<28} {'reset':>11} {'episode':>11}  solved")
        for fam, r in episodes.items():
            print(f"  {fam:<28} {_ms(r['reset_s'])} {_ms(r['episode_s'])}  {r['solved']:.0%}")
    print(f"\nafter: {_load()}")


if __name__ == "__main__":
    main()
