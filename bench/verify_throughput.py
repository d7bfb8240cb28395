"""Verifier throughput: the same answer pairs through this project's ``check("math", ...)``, raw Math-Verify and
reasoning-gym's scorer, measured in one run, on clean responses and on model-like ones. Prints a table (answers
verified per second, ratio to raw Math-Verify, agreement with how each pair was built).

    python bench/verify_throughput.py [--pairs 300] [--passes 3] [--seed 0] [--rg-python /tmp/rg-venv/bin/python]
                                      [--styles clean model]

Scorers, each given the response in its own native format:

- ``amrsd check (1 thread)``: ``check("math", gold, response)``: extraction, the cheap paths, then a Math-Verify
  comparison in a worker process with a hard timeout;
- ``amrsd check (2 threads)``: the same calls from two caller threads (the worker pool runs them in parallel);
- ``raw math_verify``: ``verify(parse("$gold$"), parse(response))`` in this process, main thread, Math-Verify's own
  signal timeouts on (its defaults), no worker process and no gold cache (Math-Verify's own small LRUs only);
- ``raw math_verify (2 processes)``: the peer of the two-thread row: the same call in a ``multiprocessing`` pool of
  2 worker processes (spawned and warmed before timing; ``Pool.map`` with its default chunking), each on its main
  thread so Math-Verify's signal timeouts stay on;
- ``reasoning-gym``: its generic scorer ``ProceduralDataset.score_answer`` on ``extract_answer(<answer>..</answer>)``
  (exact string match, partial credit for substrings; only a score of 1.0 counts as verified). reasoning-gym is
  imported here if installed, else run in the interpreter given by ``--rg-python`` (a separate venv, because its
  pins may conflict with this project's); if neither works the row says why and is skipped.

Pair kinds (about a fifth each; a third of each kind deliberately wrong): integers, fractions (as ``a/b``, scaled
``\\frac``, or a decimal), decimals (as a fraction or padded decimal), sets (shuffled), factored polynomials (as the
expanded form). Response styles, on the same pairs:

- ``clean``: one sentence and ``\\boxed{answer}`` (``<answer>answer</answer>`` for reasoning-gym);
- ``model``: what a model writes: a chain of thought with intermediate numbers (2-6 steps), then the answer dressed
  as models dress it (``x = 5``, ``18\\text{ cm}``, ``1{,}000``, ``0.750``, ``\\dfrac``, ``x \\in \\{..\\}``,
  ``\\left\\{..\\right\\}``, ``x = a \\text{ or } x = b``, ``f(x) = ..``), in one of three final forms in equal
  shares: ``$\\boxed{..}$``, a ``**Final Answer:** $..$`` line, or an unboxed sentence (``So the answer is $..$.``).
  Wrong pairs get the same dressing on the wrong value. reasoning-gym gets the same text with ``<answer>..</answer>``.

Each pass draws fresh pairs and runs every scorer on them (in rotating order); the table reports the median pass.
Not a test: no assertions, it prints. Whatever the project's extraction does (e.g. with or without a fallback for
unboxed answers) is what is measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
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

from amrsd_envs.verifiers import check  # noqa: E402

STYLES = ("clean", "model")
FORMS = ("boxed", "answer line", "sentence")


@dataclass(frozen=True)
class Pair:
    """One benchmark item: a gold, the answer a model gave, and whether the pair was built equivalent.

    ``model_answer`` is the same answer dressed as a model writes it, ``cot`` the reasoning before it and ``form``
    how the model-like response ends (see the module docstring).
    """

    kind: str
    gold: str
    answer: str
    equivalent: bool
    model_answer: str = ""
    cot: str = ""
    form: str = "boxed"

    @property
    def boxed_response(self) -> str:
        return f"Let me work through it step by step. The final result is \\boxed{{{self.answer}}}."

    @property
    def tagged_response(self) -> str:
        return f"Let me work through it step by step. <answer>{self.answer}</answer>"

    @property
    def model_response(self) -> str:
        a = self.model_answer or self.answer
        if self.form == "boxed":
            ending = f"Therefore, the final answer is $\\boxed{{{a}}}$."
        elif self.form == "answer line":
            ending = f"**Final Answer:** ${a}$"
        else:
            ending = f"So the answer is ${a}$."
        return self.cot + ending

    @property
    def model_tagged_response(self) -> str:
        return f"{self.cot}<answer>{self.model_answer or self.answer}</answer>"

    def response(self, style: str) -> str:
        """The ``\\boxed`` response in ``style`` ("clean" or "model")."""
        return self.boxed_response if style == "clean" else self.model_response

    def tagged(self, style: str) -> str:
        """The ``<answer>`` response in ``style``, for reasoning-gym."""
        return self.tagged_response if style == "clean" else self.model_tagged_response

    @property
    def group(self) -> str:
        """Which response form the model-like response has (for the per-form agreement table)."""
        return self.form


def _thousands(v: int) -> str:
    """``-2345`` -> ``-2{,}345`` (LaTeX thousands separators, as models write them)."""
    text = f"{abs(v):,}".replace(",", "{,}")
    return f"-{text}" if v < 0 else text


def _frac_tex(f: Fraction, command: str = "frac") -> str:
    sign = "-" if f < 0 else ""
    return rf"{sign}\{command}{{{abs(f.numerator)}}}{{{f.denominator}}}"


def _padded_decimal(f: Fraction) -> str | None:
    """``3/4`` -> ``0.750``: the exact decimal with one trailing zero, or None when it does not terminate."""
    if 10**6 % f.denominator:
        return None
    text = repr(float(f))
    return text + "0" if "e" not in text else None


def _set_forms(values: list[int]) -> list[str]:
    inner = ", ".join(map(str, values))
    forms = [rf"\{{{inner}\}}", rf"x \in \{{{inner}\}}", rf"\left\{{ {inner} \right\}}"]
    if len(values) == 2:
        forms.append(rf"x = {values[0]} \text{{ or }} x = {values[1]}")
    else:
        forms.append(", ".join(f"x = {v}" for v in values))
    return forms


def _chain_of_thought(rng: random.Random) -> str:
    """2-6 steps of arithmetic with intermediate numbers (distractors for any extractor that takes a number)."""
    steps = ["Let's solve this step by step.", ""]
    value = rng.randint(2, 60)
    for _ in range(rng.randint(2, 6)):
        k = rng.randint(2, 12)
        op = rng.choice(["add", "mul", "sub"])
        if op == "add":
            steps.append(f"Adding ${k}$ to ${value}$ gives ${value} + {k} = {value + k}$.")
            value += k
        elif op == "mul":
            steps.append(rf"Multiplying by {k}: $ {value} \cdot {k} = {value * k}$, so we now have {value * k}.")
            value *= k
        else:
            steps.append(f"Subtracting {k} leaves {value} - {k} = {value - k}.")
            value -= k
    steps += ["", "Checking this against the conditions of the problem, everything is consistent.", "", ""]
    return "\n".join(steps)


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
    """``n`` pairs, reproducible from ``seed`` (item i drawn from ``Random(seed + i)``; its model-like dressing from a
    second generator, so the clean pairs are the same as without it)."""
    pairs: list[Pair] = []
    for i in range(n):
        rng = random.Random(seed + i)
        dress = random.Random(10**9 + seed + i)
        kind = ("integer", "fraction", "decimal", "set", "expression")[i % 5]
        wrong = rng.random() < 1 / 3
        if kind == "integer":
            v = rng.randint(-5000, 5000)
            t = v + rng.choice([-2, -1, 1, 2]) if wrong else v
            gold, answer = str(v), str(t)
            model = dress.choice([f"x = {t}", rf"{t}\text{{ cm}}", _thousands(t)])
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
            model_forms = [_frac_tex(target, "dfrac"), f"x = {_frac_tex(target)}"]
            padded = _padded_decimal(target)
            model_forms.append(padded if padded else _frac_tex(target))
            model = dress.choice(model_forms)
        elif kind == "decimal":
            f = Fraction(rng.randint(1, 999), rng.choice([4, 8, 16, 20, 25, 40]))
            gold = str(float(f))
            target = f + Fraction(1, 100) if wrong else f
            answer = rng.choice([rf"\frac{{{target.numerator}}}{{{target.denominator}}}", f"{float(target)}0"])
            model = dress.choice(
                [f"{float(target)}0", f"x = {float(target)}", rf"{float(target)}\text{{ m}}", _frac_tex(target, "dfrac")]
            )
        elif kind == "set":
            values = rng.sample(range(-20, 21), rng.randint(2, 4))
            gold = r"\{" + ", ".join(map(str, values)) + r"\}"
            shown = list(values)
            rng.shuffle(shown)
            if wrong:
                shown = shown[:-1] if len(shown) > 2 else [*shown, 99]
            answer = rng.choice([r"\{" + ", ".join(map(str, shown)) + r"\}", ", ".join(map(str, shown))])
            model = dress.choice(_set_forms(shown))
        else:
            a, b = rng.sample([c for c in range(-9, 10) if c != 0], 2)
            factored, expanded = _poly(a, b)
            if wrong:
                expanded = _poly(a, -b)[1]
            gold, answer = factored, expanded
            model = dress.choice([expanded.replace("x^2", "x^{2}"), f"f(x) = {expanded}", expanded.replace(" ", "")])
        cot = _chain_of_thought(dress)
        form = FORMS[dress.randrange(len(FORMS))]
        pairs.append(Pair(kind, gold, answer, equivalent=not wrong, model_answer=model, cot=cot, form=form))
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
    form_agree: dict[str, list[int]] = field(default_factory=dict)  # form -> [agree, n] (model-like style)

    def add(self, pairs: list[Pair], verdicts: list[bool], seconds: float, item_seconds: list[float] | None) -> None:
        self.n += len(pairs)
        self.pass_seconds.append(seconds)
        self.agree += sum(v == p.equivalent for v, p in zip(verdicts, pairs, strict=True))
        for v, p in zip(verdicts, pairs, strict=True):
            counts = self.form_agree.setdefault(p.form, [0, 0])
            counts[0] += v == p.equivalent
            counts[1] += 1
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


def run_project(row: Row, pairs: list[Pair], threads: int, style: str = "clean") -> None:
    if threads == 1:
        verdicts, dt, items = _timed(lambda p: check("math", p.gold, p.response(style)).correct, pairs)
        row.add(pairs, verdicts, dt, items)
        return
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as ex:
        verdicts = list(ex.map(lambda p: check("math", p.gold, p.response(style)).correct, pairs))
    row.add(pairs, verdicts, time.perf_counter() - t0, None)


def run_raw_math_verify(row: Row, pairs: list[Pair], style: str = "clean") -> None:
    from math_verify import parse, verify

    verdicts, dt, items = _timed(lambda p: bool(verify(parse(f"${p.gold}$"), parse(p.response(style)))), pairs)
    row.add(pairs, verdicts, dt, items)


def _mv_init() -> None:
    """Worker initializer of the 2-process pool: import and warm Math-Verify, quiet its logger."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    verify(parse("$1$"), parse("$1$"))


def _mv_verify(item: tuple[str, str]) -> bool:
    """``verify(parse("$gold$"), parse(response))`` in a pool worker (its main thread: signal timeouts on)."""
    from math_verify import parse, verify

    gold, response = item
    try:
        return bool(verify(parse(f"${gold}$"), parse(response)))
    except Exception:  # noqa: BLE001 - a raising comparison is not credited (raw verify returns False itself)
        return False


def start_mv_pool(processes: int = 2):
    """A spawned ``multiprocessing`` pool of ``processes`` Math-Verify workers, warmed (not timed)."""
    pool = multiprocessing.get_context("spawn").Pool(processes, initializer=_mv_init)
    pool.map(_mv_verify, [("1", "$1$")] * (processes * 4), chunksize=1)  # every worker imported and warm
    return pool


def run_raw_math_verify_pool(row: Row, pairs: list[Pair], pool, style: str = "clean") -> None:
    items = [(p.gold, p.response(style)) for p in pairs]
    t0 = time.perf_counter()
    verdicts = pool.map(_mv_verify, items)  # default chunking: len / (4 * processes) items per task
    row.add(pairs, verdicts, time.perf_counter() - t0, None)


def cheap_path_count(pairs: list[Pair], style: str) -> str:
    """How many responses the project decides without Math-Verify: an answer extracted by ``extract_answer`` and a
    verdict from ``fast_verdict``. A count, or why it could not be taken (the verifier's internals may change)."""
    try:
        from amrsd_envs.verifiers import extract_answer
        from amrsd_envs.verifiers.math_verifier import fast_verdict, prepare_gold

        n = 0
        for p in pairs:
            extracted = extract_answer(p.response(style))
            n += extracted is not None and fast_verdict(prepare_gold(p.gold), extracted) is not None
        return str(n)
    except Exception as exc:  # noqa: BLE001 - the bench still runs; the line says why the count is missing
        return f"? ({type(exc).__name__}: {exc})"


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


def run_reasoning_gym(row: Row, pairs: list[Pair], python: str, style: str = "clean") -> None:
    items = [(p.gold, p.tagged(style)) for p in pairs]
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
    try:
        from importlib.metadata import version

        versions = f"; math-verify {version('math-verify')}, sympy {version('sympy')}"
    except Exception:  # noqa: BLE001
        versions = ""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs, {model}, Python {platform.python_version()}, {platform.system()}{versions}; "
        f"load average at start {load}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=300, help="answer pairs per pass (default 300)")
    ap.add_argument("--passes", type=int, default=3, help="passes, each with fresh pairs; medians are reported")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pair generator (default 0)")
    ap.add_argument(
        "--rg-python",
        default="/tmp/rg-venv/bin/python",
        help="interpreter with reasoning-gym installed, used when this one lacks it",
    )
    ap.add_argument("--styles", nargs="+", choices=STYLES, default=list(STYLES), help="response styles to run")
    ap.add_argument("--skip-rg", action="store_true", help="leave the reasoning-gym row out")
    ap.add_argument("--skip-processes", action="store_true", help="leave the 2-process raw math_verify row out")
    args = ap.parse_args(argv)

    mv_pool = None if args.skip_processes else start_mv_pool(2)  # before any thread of this process starts
    try:
        _run(args, mv_pool)
    finally:
        if mv_pool is not None:
            mv_pool.terminate()
            mv_pool.join()


def _run(args: argparse.Namespace, mv_pool) -> None:
    warm_up()
    rg_python, rg_skip = (None, "--skip-rg") if args.skip_rg else find_reasoning_gym(args.rg_python)
    names = ["raw math_verify", "raw math_verify (2 processes)", "amrsd check (1 thread)", "amrsd check (2 threads)"]
    names.append("reasoning-gym score_answer")
    rows = {(style, name): Row(name) for style in args.styles for name in names}
    cheap: dict[str, list[str]] = {style: [] for style in args.styles}
    wrong = 0
    for k in range(args.passes):
        # Fresh pairs per pass (no cache carries a pass's golds into the next); the scorer order rotates so no
        # scorer always runs first on a machine whose load drifts.
        pairs = make_pairs(args.pairs, args.seed + k * args.pairs)
        wrong += sum(not p.equivalent for p in pairs)
        runs: list[Callable[[], None]] = []
        for style in args.styles:
            cheap[style].append(cheap_path_count(pairs, style))
            r = {name: rows[(style, name)] for name in names}
            runs.append(lambda pairs=pairs, style=style, r=r: run_raw_math_verify(r["raw math_verify"], pairs, style))
            if mv_pool is not None:
                runs.append(
                    lambda pairs=pairs, style=style, r=r: run_raw_math_verify_pool(
                        r["raw math_verify (2 processes)"], pairs, mv_pool, style
                    )
                )
            runs.append(lambda pairs=pairs, style=style, r=r: run_project(r["amrsd check (1 thread)"], pairs, 1, style))
            runs.append(lambda pairs=pairs, style=style, r=r: run_project(r["amrsd check (2 threads)"], pairs, 2, style))
            if rg_python:
                runs.append(
                    lambda pairs=pairs, style=style, r=r, python=rg_python: run_reasoning_gym(
                        r["reasoning-gym score_answer"], pairs, python, style
                    )
                )
        for run in runs[k % len(runs) :] + runs[: k % len(runs)]:
            run()

    total = args.pairs * args.passes
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    cheap_text = ", ".join(f"{style}: {'+'.join(cheap[style])}" for style in args.styles)
    print(
        f"pairs: {args.passes} passes x {args.pairs} = {total} ({wrong} built wrong); decided by the project's cheap "
        f"path, no Math-Verify call, per pass: {cheap_text}"
    )
    print()
    print(
        f"| {'responses':<10} | {'scorer':<29} | {'answers/s':>10} | {'vs raw math_verify':>18} "
        f"| {'agrees with label':>17} |"
    )
    print(f"|{'-' * 12}|{'-' * 31}|{'-' * 12}|{'-' * 20}|{'-' * 19}|")
    for style in args.styles:
        base = rows[(style, "raw math_verify")].per_second
        for name in names:
            r = rows[(style, name)]
            if not r.n:
                continue
            print(
                f"| {style:<10} | {r.name:<29} | {r.per_second:>10.1f} | {r.per_second / base:>17.2f}x "
                f"| {f'{r.agree}/{r.n}':>17} |"
            )
    for style in args.styles:
        two, procs = rows[(style, "amrsd check (2 threads)")], rows[(style, "raw math_verify (2 processes)")]
        if two.n and procs.n:
            print(
                f"{style}: amrsd check (2 threads) / raw math_verify (2 processes) = "
                f"{two.per_second / procs.per_second:.2f}x answers/s"
            )
    if "model" in args.styles:
        print()
        print("model-like responses, agreement with the label by final form:")
        present = [name for name in names if rows[("model", name)].n]
        print("| " + " | ".join([f"{'form':<11}", *present]) + " |")
        print("|" + "|".join(["-" * 13, *("-" * (len(n) + 2) for n in present)]) + "|")
        for form in FORMS:
            cells = []
            for name in present:
                agree, n = rows[("model", name)].form_agree.get(form, [0, 0])
                cells.append(f"{f'{agree}/{n}':>{len(name)}}")
            print("| " + " | ".join([f"{form:<11}", *cells]) + " |")
    print()
    print(f"| {'responses':<10} | {'kind':<10} | {'raw math_verify ms/answer':>25} | {'amrsd check ms/answer':>21} |")
    print(f"|{'-' * 12}|{'-' * 12}|{'-' * 27}|{'-' * 23}|")
    for style in args.styles:
        raw, one = rows[(style, "raw math_verify")], rows[(style, "amrsd check (1 thread)")]
        for kind in raw.kind_seconds:
            a = statistics.median(raw.kind_seconds[kind]) * 1000
            b = statistics.median(one.kind_seconds[kind]) * 1000
            print(f"| {style:<10} | {kind:<10} | {a:>25.2f} | {b:>21.2f} |")
    print("(per-kind: median of per-answer times, 1 thread)")
    notes = {r.name: r.note for r in rows.values() if r.note}
    for name, note in notes.items():
        print(f"note: {name}: {note}")
    if not rg_python:
        print(f"reasoning-gym skipped: {rg_skip}")


if __name__ == "__main__":
    main()
