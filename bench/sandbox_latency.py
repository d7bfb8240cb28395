"""Sandbox latency: p50/p95 per call and calls/s, with 1 and 2 concurrent workers, against named peers.

Rows, all measured in the same run on the same snippet (``print(sum(range(1000)))``):

- ``python -I -S -c``: a plain subprocess of the same interpreter the sandboxes run (the peer);
- ``local warm``: ``make_sandbox("local")`` at its strongest isolation, one zygote shared by the workers;
- ``local one-shot``: ``warm=False``, a fresh isolated interpreter per call;
- ``docker warm pool``: ``make_sandbox("docker")`` with ``pool_size`` = workers (the registry-free test image);
- ``docker run --rm``: one ``docker run`` per call with the same image, binds and limits (the docker peer).

Ratios are p50 latency against ``python -I -S -c`` and, for docker, against ``docker run``, each at the
same number of workers. Other parts of the project add rows (e.g. environment steps/s) through
:func:`register_rows`; ``--skip-env`` leaves those of kind ``env`` out.

Usage::

    python bench/sandbox_latency.py                 # everything (starts dockerd / builds the test image)
    python bench/sandbox_latency.py --skip-docker --calls 100
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amrsd_envs.sandbox import make_sandbox  # noqa: E402
from amrsd_envs.sandbox.local import default_python  # noqa: E402

SNIPPET = "print(sum(range(1000)))"
EXPECTED = "499500\n"


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured configuration."""

    name: str
    workers: int
    calls: int
    p50_ms: float
    p95_ms: float
    rate_per_s: float
    unit: str = "calls/s"
    note: str = ""


#: name -> (kind, provider). A provider takes the parsed arguments and returns its rows.
ROW_PROVIDERS: dict[str, tuple[str, Callable[[argparse.Namespace], list[Row]]]] = {}


def register_rows(name: str, provider: Callable[[argparse.Namespace], list[Row]], *, kind: str = "env") -> None:
    """Add a row provider to this benchmark (``--skip-env`` skips those of kind ``env``)."""
    if name in ROW_PROVIDERS:
        raise ValueError(f"row provider {name!r} is already registered; registered: {sorted(ROW_PROVIDERS)}")
    ROW_PROVIDERS[name] = (kind, provider)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (q in [0, 100])."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(name: str, call: Callable[[], str], workers: int, calls: int, warmup: int = 3, note: str = "") -> Row:
    """Run ``calls`` calls split over ``workers`` threads; every call must print the expected output."""
    for _ in range(warmup):
        out = call()
        if out != EXPECTED:
            raise RuntimeError(f"{name}: unexpected output {out!r}")
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    per_worker = [calls // workers + (1 if i < calls % workers else 0) for i in range(workers)]

    def work(count: int) -> None:
        mine = []
        for _ in range(count):
            started = time.perf_counter()
            out = call()
            mine.append(time.perf_counter() - started)
            if out != EXPECTED:
                errors.append(repr(out))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(n,)) for n in per_worker]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} calls printed the wrong output, e.g. {errors[0]}")
    return Row(
        name=name,
        workers=workers,
        calls=calls,
        p50_ms=percentile(latencies, 50) * 1000,
        p95_ms=percentile(latencies, 95) * 1000,
        rate_per_s=calls / wall,
        note=note,
    )


def plain_python_call(python: str) -> Callable[[], str]:
    def call() -> str:
        return subprocess.run([python, "-I", "-S", "-c", SNIPPET], capture_output=True, text=True).stdout

    return call


def docker_run_call(image: str, binds: list[str], python: str) -> Callable[[], str]:
    argv = ["docker", "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", "10001:10001", "--memory", "768m",
            "--pids-limit", "80", "--log-driver", "none"]  # fmt: skip
    for path in binds:
        argv += ["-v", f"{path}:{path}:ro"]
    argv += [image, python, "-I", "-S", "-c", SNIPPET]

    def call() -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    return call


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores{memory}, Linux {platform.release()}"]
    parts.append(f"host Python {platform.python_version()}, sandbox Python {default_python()}")
    if shutil.which("bwrap"):
        version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
        parts.append(version)
    if shutil.which("docker"):
        server = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
        ).stdout.strip()
        parts.append(f"Docker engine {server or 'not running'}")
    load = os.getloadavg()
    parts.append(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return "; ".join(parts)


def sandbox_rows(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    python = default_python()
    for workers in args.workers:
        rows.append(measure("python -I -S -c (subprocess)", plain_python_call(python), workers, args.calls))
        with make_sandbox("local") as sb:
            level = sb.isolation.name

            def local_call(sb=sb) -> str:
                return sb.run(SNIPPET).stdout

            rows.append(measure(f"local warm ({level})", local_call, workers, args.calls))
        with make_sandbox("local", warm=False) as sb:

            def oneshot_call(sb=sb) -> str:
                return sb.run(SNIPPET).stdout

            rows.append(measure(f"local one-shot ({sb.isolation.name})", oneshot_call, workers, args.oneshot_calls))
        if not args.skip_docker:
            from amrsd_envs.sandbox.testing import docker_test_options

            options = docker_test_options()
            with make_sandbox("docker", pool_size=workers, **options) as sb:

                def docker_call(sb=sb) -> str:
                    return sb.run(SNIPPET).stdout

                rows.append(measure("docker warm pool", docker_call, workers, args.calls, note=f"pool_size={workers}"))
            run_call = docker_run_call(options["image"], options["binds"], python)
            rows.append(measure("docker run --rm per call", run_call, workers, args.docker_run_calls, warmup=1))
    return rows


def format_table(rows: list[Row]) -> str:
    """The table with p50 ratios against the plain subprocess and against docker run (same workers)."""
    base = {r.workers: r.p50_ms for r in rows if r.name.startswith("python -I -S -c")}
    docker_run = {r.workers: r.p50_ms for r in rows if r.name.startswith("docker run")}
    header = (
        f"| {'configuration':<28} | workers | calls | p50 ms | p95 ms | {'rate':>13} | p50 vs python -c "
        f"| p50 vs docker run |"
    )
    lines = [header, "|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|"]
    for r in rows:
        vs_python = f"{r.p50_ms / base[r.workers]:.2f}x" if r.workers in base and r.unit == "calls/s" else ""
        vs_docker = (
            f"{r.p50_ms / docker_run[r.workers]:.3f}x"
            if r.workers in docker_run and r.name.startswith("docker")
            else ""
        )
        lines.append(
            f"| {r.name:<28} | {r.workers:>7} | {r.calls:>5} | {r.p50_ms:>6.1f} | {r.p95_ms:>6.1f} "
            f"| {r.rate_per_s:>7.1f} {r.unit:<5} | {vs_python:>16} | {vs_docker:>17} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[Row]) -> list[str]:
    """The issue's two speed goals, checked on this run's numbers."""
    out = []
    for workers in sorted({r.workers for r in rows}):
        by_name = {r.name.split(" (")[0]: r for r in rows if r.workers == workers}
        base, local = by_name.get("python -I -S -c"), by_name.get("local warm")
        if base and local:
            verdict = "below" if local.p50_ms < base.p50_ms else "NOT below"
            out.append(
                f"workers={workers}: local warm p50 {local.p50_ms:.1f} ms is {verdict} python -I -S -c "
                f"{base.p50_ms:.1f} ms ({base.p50_ms / local.p50_ms:.1f}x faster)"
            )
        pool, run = by_name.get("docker warm pool"), by_name.get("docker run --rm per call")
        if pool and run:
            factor = run.p50_ms / pool.p50_ms
            verdict = "meets" if factor >= 5 else "MISSES"
            out.append(
                f"workers={workers}: docker warm pool p50 {pool.p50_ms:.1f} ms is {factor:.0f}x below docker run "
                f"{run.p50_ms:.1f} ms ({verdict} the >= 5x goal)"
            )
    return out


def env_rows(args: argparse.Namespace) -> list[Row]:
    """Env steps/s of AMRSD-ToolUse-v0 driven by the oracle: every family, tools and verification included."""
    import gymnasium as gym

    import amrsd_envs  # noqa: F401
    from amrsd_envs.oracle import OraclePolicy

    rows = []
    env = gym.make("AMRSD-ToolUse-v0", split="train")
    policy = OraclePolicy(env)
    for _ in range(5):  # warm-up: sandbox zygote, math workers, sympy/pint imports
        obs, info = env.reset(seed=_)
        done = False
        while not done:
            obs, _r, term, trunc, info = env.step(policy(obs, info.get("tools")))
            done = term or trunc
    latencies: list[float] = []
    episodes = 0
    wall = time.perf_counter()
    for seed in range(args.env_episodes):
        obs, info = env.reset(seed=1000 + seed)
        done = False
        while not done:
            started = time.perf_counter()
            obs, reward, term, trunc, info = env.step(policy(obs, info.get("tools")))
            latencies.append(time.perf_counter() - started)
            done = term or trunc
        if reward != 1.0:
            raise RuntimeError(f"oracle failed on {info['task_id']}")
        episodes += 1
    wall = time.perf_counter() - wall
    env.close()
    rows.append(Row(name="AMRSD-ToolUse-v0 oracle step", workers=1, calls=len(latencies),
                    p50_ms=percentile(latencies, 50) * 1000, p95_ms=percentile(latencies, 95) * 1000,
                    rate_per_s=len(latencies) / wall, unit="steps/s",
                    note=f"{episodes} episodes, resets included in the rate"))
    return rows


register_rows("env", env_rows, kind="env")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per warm/plain configuration")
    parser.add_argument("--oneshot-calls", type=int, default=60, help="calls for the one-shot local row")
    parser.add_argument("--docker-run-calls", type=int, default=20, help="calls for the docker run row")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="concurrent worker threads")
    parser.add_argument("--skip-docker", action="store_true", help="leave out the docker rows")
    parser.add_argument("--skip-env", action="store_true", help="leave out rows registered with kind 'env'")
    parser.add_argument("--env-episodes", type=int, default=120, help="oracle episodes for the env steps/s row")
    args = parser.parse_args(argv)
    if not args.skip_docker:
        from amrsd_envs.sandbox.testing import docker_unavailable_reason

        reason = docker_unavailable_reason()
        if reason:
            print(f"docker rows skipped: {reason}")
            args.skip_docker = True
    print(f"machine: {machine_description()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    rows = sandbox_rows(args)
    for name, (kind, provider) in ROW_PROVIDERS.items():
        if kind == "env" and args.skip_env:
            continue
        rows.extend(provider(args))
    print(format_table(rows))
    for line in verdicts(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
