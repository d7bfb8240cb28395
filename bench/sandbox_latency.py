"""Sandbox latency: p50/p95 per call and calls/s, with 1 and 2 concurrent workers, against named peers.

Rows, all measured in the same run on the same snippet (``print(sum(range(1000)))``):

- ``python -I -S -c``: a plain subprocess of the same interpreter the sandboxes run (the peer);
- ``local warm``: ``make_sandbox("local")`` at its strongest isolation, one zygote shared by the workers;
- ``local warm, no namespaces``: the same warm zygote design at ``isolation=IsolationLevel.RLIMITS`` (fork from
  the warm process, per-call rlimits, own session and working directory; no bubblewrap, no namespaces): the
  difference to ``local warm`` is what the isolation itself costs. RLIMITS is not a security boundary. Its zygote
  preloads ``shutil`` (``preload=["shutil"]``): at this level a call's supervisor removes the call's on-disk
  directory with it, and would otherwise import it after every call, on the critical path;
- ``local one-shot``: ``warm=False``, a fresh isolated interpreter per call;
- ``docker warm pool``: ``make_sandbox("docker")`` with ``pool_size`` = workers (the registry-free test image);
- ``docker exec``: the docker peer a skeptic would pick: one already-running container per worker (same image,
  binds and container limits as the pool), and per call the docker SDK's ``container.exec_run`` of
  ``python -I -S -c`` in it (exec create + start + inspect, three engine round trips);
- ``docker run --rm``: one ``docker run`` per call with the same image, binds and limits.

Ratios are latency against ``python -I -S -c`` (p50 and p95) and, for docker, p50 against ``docker exec`` and
``docker run``, each at the same number of workers; the verdict lines give p50 and p95. Other parts of the
project add rows (e.g. environment steps/s) through :func:`register_rows`; ``--skip-env`` leaves those of kind
``env`` out.

Usage::

    python bench/sandbox_latency.py                 # everything (starts dockerd / builds the test image)
    python bench/sandbox_latency.py --skip-docker --calls 100
    python bench/sandbox_latency.py --skip-env --calls 150 --docker-exec-calls 100
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amrsd_envs.sandbox import IsolationLevel, make_sandbox  # noqa: E402
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


@contextlib.contextmanager
def docker_exec_peer(image: str, binds: list[str], python: str, containers: int):
    """``containers`` running containers (the pool's limits, an idle ``sleep`` as their process) and a call that
    runs the snippet in one of them with ``container.exec_run``; the containers are removed on exit.

    A call takes a free container from a queue and gives it back, so with ``containers`` = workers no call waits
    for another (as in the pool).
    """
    import docker

    client = docker.from_env(version="auto")
    started = []
    try:
        for _ in range(containers):
            started.append(
                client.containers.run(
                    image,
                    ["sleep", "infinity"],
                    detach=True,
                    user="10001:10001",
                    network_mode="none",
                    network_disabled=True,
                    read_only=True,
                    tmpfs={"/tmp": "rw,nosuid,nodev,size=256m,mode=1777"},
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    mem_limit="768m",
                    memswap_limit="768m",
                    pids_limit=80,
                    nano_cpus=10**9,
                    volumes={path: {"bind": path, "mode": "ro"} for path in binds},
                    log_config=docker.types.LogConfig(type="none"),
                    environment={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"},
                    working_dir="/tmp",
                    labels={"amrsd.bench": "docker-exec-peer"},
                )
            )
        free: queue.Queue = queue.Queue()
        for container in started:
            free.put(container)
        argv = [python, "-I", "-S", "-c", SNIPPET]

        def call() -> str:
            container = free.get()
            try:
                _code, (out, _err) = container.exec_run(argv, user="10001:10001", workdir="/tmp", demux=True)
            finally:
                free.put(container)
            return (out or b"").decode()

        yield call
    finally:
        for container in started:
            try:
                container.remove(force=True)
            except Exception as exc:  # noqa: BLE001 - best effort, say so
                print(f"docker exec peer: could not remove {container.short_id}: {exc}", file=sys.stderr)
        client.close()


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
        if not args.skip_rlimits:
            # The same warm zygote without bubblewrap or namespaces: what the isolation itself costs. At this level
            # each call's supervisor removes an on-disk call directory with shutil, which it would import after
            # the call (tens of ms on a loaded machine, not an isolation cost): preloaded, as `preload=` allows.
            with make_sandbox("local", isolation=IsolationLevel.RLIMITS, preload=["shutil"]) as sb:

                def rlimits_call(sb=sb) -> str:
                    return sb.run(SNIPPET).stdout

                rows.append(
                    measure(f"local warm, no namespaces ({sb.isolation.name})", rlimits_call, workers, args.calls)
                )
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
            if args.docker_exec_calls > 0:
                with docker_exec_peer(options["image"], options["binds"], python, workers) as exec_call:
                    rows.append(
                        measure("docker exec (running ctr)", exec_call, workers, args.docker_exec_calls, warmup=2)
                    )
            run_call = docker_run_call(options["image"], options["binds"], python)
            rows.append(measure("docker run --rm per call", run_call, workers, args.docker_run_calls, warmup=1))
    return rows


def _peer(rows: list[Row], prefix: str) -> dict[int, Row]:
    return {r.workers: r for r in rows if r.name.startswith(prefix)}


def format_table(rows: list[Row]) -> str:
    """The table with ratios against the plain subprocess (p50, p95) and p50 against docker exec / docker run."""
    base = _peer(rows, "python -I -S -c")
    docker_exec = _peer(rows, "docker exec")
    docker_run = _peer(rows, "docker run")
    header = (
        f"| {'configuration':<36} | workers | calls | p50 ms | p95 ms | {'rate':>15} | p50 vs python -c "
        f"| p95 vs python -c | p50 vs docker exec | p50 vs docker run |"
    )
    lines = [header, "|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|"]
    for r in rows:
        timed = r.unit == "calls/s"
        peer = base.get(r.workers) if timed else None
        vs_python = f"{r.p50_ms / peer.p50_ms:.2f}x" if peer else ""
        vs_python95 = f"{r.p95_ms / peer.p95_ms:.2f}x" if peer else ""
        is_docker = r.name.startswith("docker")
        vs_exec = f"{r.p50_ms / docker_exec[r.workers].p50_ms:.3f}x" if is_docker and r.workers in docker_exec else ""
        vs_run = f"{r.p50_ms / docker_run[r.workers].p50_ms:.3f}x" if is_docker and r.workers in docker_run else ""
        rate = f"{r.rate_per_s:.1f} {r.unit}"
        lines.append(
            f"| {r.name:<36} | {r.workers:>7} | {r.calls:>5} | {r.p50_ms:>6.1f} | {r.p95_ms:>6.1f} "
            f"| {rate:>15} | {vs_python:>16} | {vs_python95:>16} | {vs_exec:>18} | {vs_run:>17} |"
        )
    return "\n".join(lines)


def _compare(label: str, row: Row, peer_label: str, peer: Row) -> str:
    """``label p50/p95 vs peer p50/p95`` and the latency ratios row/peer (below 1.00x: ``label`` is faster)."""
    return (
        f"{label} p50 {row.p50_ms:.1f} ms, p95 {row.p95_ms:.1f} ms vs {peer_label} p50 {peer.p50_ms:.1f} ms, "
        f"p95 {peer.p95_ms:.1f} ms (ratio {row.p50_ms / peer.p50_ms:.2f}x at p50, {row.p95_ms / peer.p95_ms:.2f}x at p95)"
    )


def verdicts(rows: list[Row]) -> list[str]:
    """The issue's speed goals and the skeptic's comparisons, checked on this run's numbers (p50 and p95)."""
    out = []
    for workers in sorted({r.workers for r in rows}):
        by_name = {r.name.split(" (")[0]: r for r in rows if r.workers == workers}
        base, local = by_name.get("python -I -S -c"), by_name.get("local warm")
        rlimits = by_name.get("local warm, no namespaces")
        if base and local:
            verdict = "below" if local.p50_ms < base.p50_ms else "NOT below"
            verdict95 = "below" if local.p95_ms < base.p95_ms else "NOT below"
            out.append(
                f"workers={workers}: "
                + _compare("local warm", local, "python -I -S -c", base)
                + f" (p50 {verdict}, p95 {verdict95})"
            )
        if local and rlimits:
            out.append(
                f"workers={workers}: isolation cost: local warm p50 {local.p50_ms:.1f} ms / p95 {local.p95_ms:.1f} ms"
                f" vs the same zygote without namespaces p50 {rlimits.p50_ms:.1f} ms / p95 {rlimits.p95_ms:.1f} ms"
                f" ({local.p50_ms / rlimits.p50_ms:.2f}x at p50, {local.p95_ms / rlimits.p95_ms:.2f}x at p95;"
                f" {local.p50_ms - rlimits.p50_ms:+.1f} ms at p50)"
            )
        if base and rlimits:
            out.append(f"workers={workers}: " + _compare("local warm, no namespaces", rlimits, "python -I -S -c", base))
        pool, run = by_name.get("docker warm pool"), by_name.get("docker run --rm per call")
        execd = by_name.get("docker exec")
        if pool and execd:
            verdict = "below" if pool.p50_ms < execd.p50_ms else "NOT below"
            out.append(
                f"workers={workers}: " + _compare("docker warm pool", pool, "docker exec", execd) + f" (p50 {verdict})"
            )
        if pool and run:
            factor = run.p50_ms / pool.p50_ms
            verdict = "meets" if factor >= 5 else "MISSES"
            out.append(
                f"workers={workers}: "
                + _compare("docker warm pool", pool, "docker run", run)
                + f": {factor:.0f}x below at p50, {run.p95_ms / pool.p95_ms:.0f}x at p95 ({verdict} the >= 5x p50 goal)"
            )
        if base and pool:
            out.append(f"workers={workers}: " + _compare("docker warm pool", pool, "python -I -S -c", base))
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
    parser.add_argument(
        "--docker-exec-calls", type=int, default=100, help="calls for the docker exec row (0 leaves it out)"
    )
    parser.add_argument(
        "--skip-rlimits", action="store_true", help="leave out the local warm row without namespaces (RLIMITS)"
    )
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
