"""Verifier throughput: the same answer pairs through this project's ``check("math", ...)``, raw Math-Verify and
reasoning-gym's scorer, measured in one run. Prints a table (answers verified per second, ratio to raw Math-Verify,
agreement with how each pair was built).

    python bench/verify_throughput.py [--pairs 300] [--passes 3] [--seed 0] [--rg-python /tmp/rg-venv/bin/python]

Scorers, each given the response in its own native format:

- ``amrsd check (1 thread)``: ``check("math", gold, "... \\boxed{answer}")``: extraction, the cheap paths, then a
  Math-Verify comparison in a worker process with a hard timeout;
- ``amrsd check (2 threads)``: the same calls from two caller threads (the worker pool runs them in parallel);
- ``raw math_verify``: ``verify(parse("$gold$"), parse(response))`` in this process, main thread, Math-Verify's own
  signal timeouts on (its defaults), no worker process and no gold cache (Math-Verify's own small LRUs only);
- ``reasoning-gym``: its generic scorer ``ProceduralDataset.score_answer`` on ``extract_answer(<answer>..</answer>)``
  (exact string match, partial credit for substrings; only a score of 1.0 counts as verified). reasoning-gym is
  imported here if installed, else run in the interpreter given by ``--rg-python`` (a separate venv, because its
  pins may conflict with this project's); if neither works the row says why and is skipped.

Pair kinds (about a fifth each; a third of each kind deliberately wrong): integers, fractions (as ``a/b``, scaled
``\\frac``, or a decimal), decimals (as a fraction or padded decimal), sets (shuffled), factored polynomials (as the
expanded form). Each pass draws fresh pairs and runs every scorer on them (in rotating order); the table reports
the median pass. Not a test: no assertions, it prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from amrsd_envs.verifiers import check, extract_answer  # noqa: E402
from amrsd_envs.verifiers.math_verifier import fast_verdict, prepare_gold  # noqa: E402


@dataclass(frozen=True)
class Pair:
    """One benchmark item: a gold, the answer a model gave, and whether the pair was built equivalent."""

    kind: str
    gold: str
    answer: str
    equivalent: bool

    @property
    def boxed_response(self) -> str:
        return f"Let me work through it step by step. The final result is \\boxed{{{self.answer}}}."

    @property
    def tagged_response(self) -> str:
        return f"Let me work through it step by step. <answer>{self.answer}</answer>"


def _poly(a: int, b: int) -> tuple[str, str]:
    def lin(c: int) -> str:
        return f"(x + {c})" if c >= 0 else f"(x - {-c})"

    s, p = a + b, a * b
    expanded = (
        "x^2"
        + (f" + {s}x" if s > 0 else f" - {-s}x" if s < 0 else "")
        + (f" + {p}" if p > 0 else f" - {-p}" if p < 0 else "")
    )
    return lin(a) + lin(b), expanded


def make_pairs(n: int, seed: int) -> list[Pair]:
    """``n`` pairs, reproducible from ``seed`` (item i drawn from ``Random(seed + i)``)."""
    pairs: list[Pair] = []
    for i in range(n):
        rng = random.Random(seed + i)
        kind = ("integer", "fraction", "decimal", "set", "expression")[i % 5]
        wrong = rng.random() < 1 / 3
        if kind == "integer":
            v = rng.randint(-5000, 5000)
            gold, answer = str(v), str(v + rng.choice([-2, -1, 1, 2]) if wrong else v)
        elif kind == "fraction":
            f = Fraction(rng.randint(1, 40), rng.choice([2, 3, 4, 5, 7, 8, 9, 16]))
            while f.denominator == 1:
                f += Fraction(1, 2)
            gold = rf"\frac{{{f.numerator}}}{{{f.denominator}}}"
            target = f + Fraction(1, f.denominator) if wrong else f
            k = rng.randint(2, 5)
            forms = [
                f"{target.numerator}/{target.denominator}",
                rf"\frac{{{k * target.numerator}}}{{{k * target.denominator}}}",
            ]
            if 10**6 % target.denominator == 0:
                forms.append(str(float(target)))
            answer = rng.choice(forms)
        elif kind == "decimal":
            f = Fraction(rng.randint(1, 999), rng.choice([4, 8, 16, 20, 25, 40]))
            gold = str(float(f))
            target = f + Fraction(1, 100) if wrong else f
            answer = rng.choice([rf"\frac{{{target.numerator}}}{{{target.denominator}}}", f"{float(target)}0"])
        elif kind == "set":
            values = rng.sample(range(-20, 21), rng.randint(2, 4))
            gold = r"\{" + ", ".join(map(str, values)) + r"\}"
            shown = list(values)
            rng.shuffle(shown)
            if wrong:
                shown = shown[:-1] if len(shown) > 2 else [*shown, 99]
            answer = rng.choice([r"\{" + ", ".join(map(str, shown)) + r"\}", ", ".join(map(str, shown))])
        else:
            a, b = rng.sample([c for c in range(-9, 10) if c != 0], 2)
            factored, expanded = _poly(a, b)
            if wrong:
                expanded = _poly(a, -b)[1]
            gold, answer = factored, expanded
        pairs.append(Pair(kind, gold, answer, equivalent=not wrong))
    return pairs


@dataclass
class Row:
    """One scorer's results over every pass: wall seconds per pass, agreement, per-kind item seconds."""

    name: str
    n: int = 0
    pass_seconds: list[float] = field(default_factory=list)
    agree: int = 0  # verdicts equal to the construction label, over all passes
    kind_seconds: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    def add(self, pairs: list[Pair], verdicts: list[bool], seconds: float, item_seconds: list[float] | None) -> None:
        self.n += len(pairs)
        self.pass_seconds.append(seconds)
        self.agree += sum(v == p.equivalent for v, p in zip(verdicts, pairs, strict=True))
        for p, dt in zip(pairs, item_seconds, strict=True) if item_seconds is not None else ():
            self.kind_seconds.setdefault(p.kind, []).append(dt)

    @property
    def per_second(self) -> float:
        """Median over passes of answers verified per second (passes have equal size)."""
        per_pass = self.n / len(self.pass_seconds)
        return per_pass / statistics.median(self.pass_seconds)


def _timed(fn: Callable[[Pair], bool], pairs: list[Pair]) -> tuple[list[bool], float, list[float]]:
    verdicts, items = [], []
    t0 = time.perf_counter()
    for p in pairs:
        t = time.perf_counter()
        verdicts.append(fn(p))
        items.append(time.perf_counter() - t)
    return verdicts, time.perf_counter() - t0, items


def warm_up() -> None:
    """Start the worker pool and import Math-Verify outside the timed regions."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    verify(parse("$1$"), parse("$1$"))
    with ThreadPoolExecutor(max_workers=2) as ex:  # both pool workers started
        list(ex.map(lambda _: check("math", r"x^2", r"\boxed{x \cdot x}"), range(2)))


def run_project(row: Row, pairs: list[Pair], threads: int) -> None:
    if threads == 1:
        verdicts, dt, items = _timed(lambda p: check("math", p.gold, p.boxed_response).correct, pairs)
        row.add(pairs, verdicts, dt, items)
        return
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as ex:
        verdicts = list(ex.map(lambda p: check("math", p.gold, p.boxed_response).correct, pairs))
    row.add(pairs, verdicts, time.perf_counter() - t0, None)


def run_raw_math_verify(row: Row, pairs: list[Pair]) -> None:
    from math_verify import parse, verify

    verdicts, dt, items = _timed(lambda p: bool(verify(parse(f"${p.gold}$"), parse(p.boxed_response))), pairs)
    row.add(pairs, verdicts, dt, items)


_RG_SCRIPT = r"""
import json, sys, time
from reasoning_gym.dataset import ProceduralDataset
from reasoning_gym.utils import extract_answer
from importlib.metadata import version
items = json.load(sys.stdin)
t0 = time.perf_counter()
scores = [ProceduralDataset.score_answer(None, extract_answer(r), {"answer": g}) for g, r in items]
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "scores": scores, "version": version("reasoning-gym")}))
"""


def find_reasoning_gym(rg_python: str) -> tuple[str | None, str]:
    """(an interpreter that imports reasoning_gym, "") or (None, why not)."""
    reasons = []
    for python in dict.fromkeys([sys.executable, rg_python]):
        if not Path(python).exists():
            reasons.append(f"{python}: not found")
            continue
        proc = subprocess.run([python, "-c", "import reasoning_gym"], capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return python, ""
        reasons.append(f"{python}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return None, "; ".join(reasons)


def run_reasoning_gym(row: Row, pairs: list[Pair], python: str) -> None:
    items = [(p.gold, p.tagged_response) for p in pairs]
    proc = subprocess.run(
        [python, "-c", _RG_SCRIPT], input=json.dumps(items), capture_output=True, text=True, timeout=600, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    row.add(pairs, [s == 1.0 for s in out["scores"]], out["seconds"], None)
    where = "this interpreter" if python == sys.executable else f"separate venv {python}"
    row.note = f"reasoning-gym {out['version']} in {where}; its loop timed inside that process"


def machine() -> str:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), model)
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{os.cpu_count()} CPUs, {model}, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=300, help="answer pairs per pass (default 300)")
    ap.add_argument("--passes", type=int, default=3, help="passes, each with fresh pairs; medians are reported")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pair generator (default 0)")
    ap.add_argument(
        "--rg-python",
        default="/tmp/rg-venv/bin/python",
        help="interpreter with reasoning-gym installed, used when this one lacks it",
    )
    args = ap.parse_args()

    warm_up()
    rg_python, rg_skip = find_reasoning_gym(args.rg_python)
    raw, one, two, rg = (
        Row("raw math_verify"),
        Row("amrsd check (1 thread)"),
        Row("amrsd check (2 threads)"),
        Row("reasoning-gym score_answer"),
    )
    fast = wrong = 0
    for k in range(args.passes):
        # Fresh pairs per pass (no cache carries a pass's golds into the next); the scorer order rotates so no
        # scorer always runs first on a machine whose load drifts.
        pairs = make_pairs(args.pairs, args.seed + k * args.pairs)
        fast += sum(
            fast_verdict(prepare_gold(p.gold), extract_answer(p.boxed_response) or "") is not None for p in pairs
        )
        wrong += sum(not p.equivalent for p in pairs)
        runs: list[Callable[[], None]] = [
            lambda pairs=pairs: run_raw_math_verify(raw, pairs),
            lambda pairs=pairs: run_project(one, pairs, 1),
            lambda pairs=pairs: run_project(two, pairs, 2),
        ]
        if rg_python:
            runs.append(lambda pairs=pairs, python=rg_python: run_reasoning_gym(rg, pairs, python))
        for run in runs[k % len(runs) :] + runs[: k % len(runs)]:
            run()

    total = args.pairs * args.passes
    print(f"machine: {machine()}")
    print(
        f"pairs: {args.passes} passes x {args.pairs} = {total} ({wrong} built wrong; {fast} decided by the "
        "cheap path, no Math-Verify call)"
    )
    rows = [raw, one, two] + ([rg] if rg_python else [])
    base = raw.per_second
    print()
    print(f"| {'scorer':<28} | {'answers/s':>10} | {'vs raw math_verify':>18} | {'agrees with label':>17} |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 20}|{'-' * 19}|")
    for r in rows:
        print(f"| {r.name:<28} | {r.per_second:>10.1f} | {r.per_second / base:>17.2f}x | {f'{r.agree}/{r.n}':>17} |")
    print()
    print(f"| {'kind':<10} | {'raw math_verify ms/answer':>25} | {'amrsd check ms/answer':>21} |")
    print(f"|{'-' * 12}|{'-' * 27}|{'-' * 23}|")
    for kind in raw.kind_seconds:
        a = statistics.median(raw.kind_seconds[kind]) * 1000
        b = statistics.median(one.kind_seconds[kind]) * 1000
        print(f"| {kind:<10} | {a:>25.2f} | {b:>21.2f} |")
    print("(per-kind: median of per-answer times, 1 thread)")
    for r in rows:
        if r.note:
            print(f"note: {r.name}: {r.note}")
    if not rg_python:
        print(f"reasoning-gym skipped: {rg_skip}")


if __name__ == "__main__":
    main()
