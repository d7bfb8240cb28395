"""``amrsd-train compare``: every (algorithm, seed) on the same tasks and budget, then one table and one figure.

    amrsd-train compare --config configs/tiny-grpo.yaml --seeds 3 --steps 50 \\
        [--algorithms grpo,raw_sd,rlsd,gcpo,entropy_realloc,amrsd] [--long-steps 200 --long-algorithms raw_sd,amrsd] \\
        [--root runs/compare] [--results docs/RESULTS.md] [--plot docs/results.png] [key=value ...]

Each run is ``amrsd-train --config CFG key=value ... algorithm=A seed=S total_steps=N output_dir=ROOT/A/seed_S`` in
its own subprocess, one after another, its output in ``ROOT/A/seed_S/compare.log``. Every run's config is
validated before the first one starts. A run whose ``metrics.jsonl`` holds an eval row at step N, beside a complete
checkpoint of step N, is skipped; any other run is started again and the trainer resumes it from its latest
checkpoint (``resume: auto``). The long runs (``--long-steps``) live in ``ROOT/long/A/seed_0``, one seed each.

Then the runs' metrics become a markdown table, written between ``<!-- compare:begin -->`` and
``<!-- compare:end -->`` of the results file (the prose around the block is kept), and a PNG of the eval curves.
A failed run is reported with its log and left out of the table; the command then exits 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from amrsd_train.algorithms import ALGORITHMS as _REGISTRY
from amrsd_train.config import TrainConfig, validated

ALGORITHMS: tuple[str, ...] = _REGISTRY.names()  # the built-ins; a name registered later is checked at run time
DEFAULT_ALGORITHMS = ("grpo", "raw_sd", "rlsd", "gcpo", "entropy_realloc", "amrsd")
RUN_KEYS = ("algorithm", "seed", "total_steps", "output_dir")  # set by compare for each run, never by an override
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
PASS_KEY = "eval/pass@1"
MEAN_KEYS = {"leak_rate": "reflect/leak_rate", "accept_rate": "reflect/accept_rate",
             "gate_frac": "amrsd/gate_frac", "step_s": "time/step_s"}
# Okabe-Ito, distinguishable with the common colour-vision deficiencies; amrsd gets the strongest one
COLOURS = {"amrsd": "#D55E00", "grpo": "#000000", "raw_sd": "#0072B2", "rlsd": "#009E73", "gcpo": "#CC79A7",
           "entropy_realloc": "#E69F00"}


class CompareSpec(BaseModel):
    """What ``amrsd-train compare`` runs; each field is one command-line option (its help is the description)."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="YAML training config shared by every run.")
    algorithms: list[str] = Field(
        list(DEFAULT_ALGORITHMS), description=f"Comma-separated algorithms to compare (of {', '.join(ALGORITHMS)}).")
    seeds: int = Field(3, ge=1, description="Seeds per algorithm: 0 .. seeds-1.")
    steps: int = Field(ge=1, description="total_steps of every run (the same budget for all).")
    long_steps: int | None = Field(None, ge=1, description="Also run --long-algorithms this many steps, seed 0 only.")
    long_algorithms: list[str] = Field(["raw_sd", "amrsd"], description="Comma-separated algorithms of the long runs.")
    root: str = Field("runs/compare", description="Runs go to ROOT/ALGORITHM/seed_S (long runs: ROOT/long/...).")
    results: str = Field("docs/RESULTS.md", description="Markdown file whose compare block is (re)written.")
    plot: str = Field("docs/results.png", description="PNG of the eval curves.")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides applied to every run.")
    summarise_only: bool = Field(
        False, description="Start no run: rewrite the table and plot from the runs under ROOT that finished (e.g. "
        "after several compare processes shared the work)."
    )

    @field_validator("algorithms", "long_algorithms", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        return [a.strip() for a in value.split(",") if a.strip()] if isinstance(value, str) else value

    @field_validator("algorithms", "long_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("no algorithm given; name at least one, e.g. grpo,amrsd")
        for name in value:
            if name not in _REGISTRY:
                close = difflib.get_close_matches(name, _REGISTRY.names(), n=1)
                raise ValueError(f"unknown algorithm {name!r}; valid: {', '.join(_REGISTRY.names())}"
                                 + (f"; did you mean {close[0]!r}?" if close else ""))
        if len(set(value)) != len(value):
            raise ValueError(f"an algorithm is listed twice in {','.join(value)}; list each once")
        return value

    @field_validator("overrides")
    @classmethod
    def _no_run_keys(cls, value: list[str]) -> list[str]:
        for item in value:
            if item.partition("=")[0] in RUN_KEYS:
                raise ValueError(f"override {item!r}: compare sets {', '.join(RUN_KEYS)} of each run itself; use "
                                 "--algorithms, --seeds, --steps and --root instead")
        return value

    @model_validator(mode="after")
    def _long_runs_differ(self) -> "CompareSpec":
        if self.long_steps is not None and self.long_steps <= self.steps:
            raise ValueError(f"--long-steps {self.long_steps} is not longer than --steps {self.steps}; raise it or "
                             "leave it out")
        return self


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a comparison: the shared config, with its own algorithm, seed, budget and folder."""

    config: str
    algorithm: str
    seed: int
    steps: int
    output_dir: Path
    shared_overrides: tuple[str, ...] = ()
    long: bool = False

    @property
    def overrides(self) -> list[str]:
        return [*self.shared_overrides, f"algorithm={self.algorithm}", f"seed={self.seed}",
                f"total_steps={self.steps}", f"output_dir={self.output_dir}"]

    @property
    def label(self) -> str:
        return f"{'long ' if self.long else ''}{self.algorithm} seed {self.seed}"

    @property
    def log_path(self) -> Path:
        return self.output_dir / "compare.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "amrsd_train", "--config", self.config, *self.overrides]


@dataclass(frozen=True)
class RunOutcome:
    run: PlannedRun
    status: Literal["skipped", "done", "failed"]
    seconds: float
    returncode: int = 0


@dataclass(frozen=True)
class SeedResult:
    """One run's eval curve and its per-step means (None where the run never logged the key)."""

    seed: int
    steps: list[int]
    pass1: list[float]
    means: dict[str, float | None]

    @property
    def final(self) -> float:
        return self.pass1[-1]

    @property
    def best(self) -> float:
        return max(self.pass1)

    @property
    def peak_step(self) -> int:
        return self.steps[self.pass1.index(self.best)]

    @property
    def auc(self) -> float:
        return curve_mean(self.steps, self.pass1)

    @property
    def drop(self) -> float:
        return drop_from_peak(self.pass1)


@dataclass(frozen=True)
class AlgorithmSummary:
    """An algorithm's runs over seeds. Spreads are sample standard deviations (0 for a single seed)."""

    algorithm: str
    runs: list[SeedResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.runs)

    def stat(self, name: str) -> tuple[float, float]:
        """(mean, std) over seeds of a SeedResult property: ``final``, ``best``, ``auc``, ``drop``, ``peak_step``."""
        return mean_std([float(getattr(r, name)) for r in self.runs])

    def mean_of(self, key: str) -> float | None:
        """Mean over seeds of a per-step mean of MEAN_KEYS (seeds without it left out; None when none has it)."""
        values = [r.means[key] for r in self.runs if r.means.get(key) is not None]
        return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Provenance:
    command: str
    commit: str
    dirty: bool
    machine: str
    date: str


# -- statistics (pure) ------------------------------------------------------------------------------------------


def curve_mean(steps: Sequence[int], values: Sequence[float]) -> float:
    """Area under the eval curve by the trapezoid rule, divided by its step span: the curve's mean pass@1.
    A single point is its own mean."""
    if len(values) == 1:
        return float(values[0])
    area = sum((s1 - s0) * (v0 + v1) / 2 for s0, s1, v0, v1 in zip(steps, steps[1:], values, values[1:]))
    return area / (steps[-1] - steps[0])


def drop_from_peak(values: Sequence[float]) -> float:
    """max_t (max_{u <= t} v_u - v_t): the largest fall below the best value seen so far (0 for a rising curve)."""
    peak, drop = -math.inf, 0.0
    for v in values:
        peak = max(peak, v)
        drop = max(drop, peak - v)
    return drop


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


# -- planning, validation, running -------------------------------------------------------------------------------


def plan_runs(spec: CompareSpec) -> list[PlannedRun]:
    """Every (algorithm, seed) of the main comparison in order, then the long runs (seed 0)."""
    root, shared = Path(spec.root), tuple(spec.overrides)
    runs = [PlannedRun(spec.config, a, s, spec.steps, root / a / f"seed_{s}", shared)
            for a in spec.algorithms for s in range(spec.seeds)]
    if spec.long_steps is not None:
        runs += [PlannedRun(spec.config, a, 0, spec.long_steps, root / "long" / a / "seed_0", shared, long=True)
                 for a in spec.long_algorithms]
    return runs


def validate_runs(runs: Sequence[PlannedRun]) -> None:
    """Load every run's config as the trainer will (ValueError naming the run and the bad key)."""
    from amrsd_train.run import load_config

    for run in runs:
        try:
            load_config(run.config, run.overrides)
        except ValueError as exc:
            raise ValueError(f"{run.label}: {exc}") from None


def is_complete(run: PlannedRun) -> bool:
    """The run logged its eval at its last step and saved that step's complete checkpoint."""
    from amrsd_train.checkpoint import latest_checkpoint

    rows = read_metrics(run.output_dir / "metrics.jsonl")
    if not any(r.get("step") == run.steps and PASS_KEY in r for r in rows):
        return False
    last = latest_checkpoint(run.output_dir / "checkpoints")
    return last is not None and last.name == f"step_{run.steps:06d}"


def launch_subprocess(run: PlannedRun) -> int:
    """Run the trainer for ``run`` in a child process, appending its output to the run's log; its exit code."""
    run.output_dir.mkdir(parents=True, exist_ok=True)
    with run.log_path.open("a") as log:
        log.write(f"\n$ {shlex.join(run.command())}\n")
        log.flush()
        return subprocess.run(run.command(), stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def run_all(runs: Sequence[PlannedRun], *, launch: Callable[[PlannedRun], int] = launch_subprocess,
            out: TextIO | None = None) -> list[RunOutcome]:
    """Run each planned run in turn (skipping complete ones), one progress line each to ``out`` (default: stdout);
    never stops at a failure."""
    out = out or sys.stdout
    outcomes = []
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run.label}: ", end="", file=out, flush=True)
        outcome = _run_one(run, launch)
        print(_describe(outcome), file=out, flush=True)
        outcomes.append(outcome)
    return outcomes


def _run_one(run: PlannedRun, launch: Callable[[PlannedRun], int]) -> RunOutcome:
    if is_complete(run):
        return RunOutcome(run, "skipped", 0.0)
    t0 = time.perf_counter()
    code = launch(run)
    status = "done" if code == 0 and is_complete(run) else "failed"
    return RunOutcome(run, status, time.perf_counter() - t0, code)


def _describe(outcome: RunOutcome) -> str:
    run = outcome.run
    if outcome.status == "failed":
        return f"FAILED (exit {outcome.returncode}) after {outcome.seconds:.0f}s; log: {run.log_path}"
    final = [r for r in read_metrics(run.output_dir / "metrics.jsonl") if PASS_KEY in r][-1][PASS_KEY]
    when = "complete already, skipped" if outcome.status == "skipped" else f"done in {outcome.seconds:.0f}s"
    return f"{when}; final pass@1 {final:.3f} ({run.output_dir})"


# -- reading results (pure) --------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl ([] when absent); a last line cut off by a killed writer is ignored."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines[:-1]]
    try:
        rows += [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        pass
    return rows


def seed_result(seed: int, rows: list[dict[str, Any]]) -> SeedResult | None:
    """A run's eval curve and step means from its metric rows (None without any eval row)."""
    evals = sorted((r for r in rows if PASS_KEY in r), key=lambda r: r["step"])
    if not evals:
        return None
    means = {}
    for name, key in MEAN_KEYS.items():
        values = [r[key] for r in rows if r.get(key) is not None]
        means[name] = sum(values) / len(values) if values else None
    return SeedResult(seed, [r["step"] for r in evals], [float(r[PASS_KEY]) for r in evals], means)


def summarise(root: str | Path, algorithms: Sequence[str], seeds: int, *, steps: int | None = None
              ) -> list[AlgorithmSummary]:
    """Read ``root/A/seed_S/metrics.jsonl`` for each algorithm and seed. With ``steps``, only runs whose last eval
    is at that step count (a failed or half-finished run is left out, and ``n`` shows it)."""
    out = []
    for algorithm in algorithms:
        runs = []
        for seed in range(seeds):
            result = seed_result(seed, read_metrics(Path(root) / algorithm / f"seed_{seed}" / "metrics.jsonl"))
            if result is not None and (steps is None or result.steps[-1] == steps):
                runs.append(result)
        out.append(AlgorithmSummary(algorithm, runs))
    return out


# -- writing results ---------------------------------------------------------------------------------------------


def collect_provenance(command: str) -> Provenance:
    """The command, the commit of this code (and whether its tree had changes), the machine and the time."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain"))
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs ({_cpu_model()})"
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Provenance(command, commit, dirty, machine, date)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parent)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def results_block(summaries: Sequence[AlgorithmSummary], long: Sequence[AlgorithmSummary],
                  provenance: Provenance, steps: int, long_steps: int | None) -> str:
    """The generated markdown, markers included."""
    lines = [BEGIN, "", f"Held-out pass@1 after {steps} steps: mean ± std over seeds (sample std). Drop from peak, "
             "hint leak and accept rates, gate fraction and step time: means over seeds of each run's value.", "",
             "| algorithm | final pass@1 | best pass@1 | mean pass@1 over the curve (AUC) | drop from peak | "
             "hint leak rate | hint accept rate | gate fraction | step time (s) | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_main_row(s) for s in summaries]
    if long:
        lines += ["", f"Long runs: {long_steps} steps, seed 0.", "",
                  "| algorithm | final pass@1 | best pass@1 | drop from peak | step of the peak |",
                  "|---|---|---|---|---|"]
        lines += [_long_row(s) for s in long]
    tree = "with uncommitted changes" if provenance.dirty else "clean tree"
    lines += ["", f"Produced by `{provenance.command}` at commit `{provenance.commit}` ({tree}) on "
              f"{provenance.machine}, {provenance.date}.", "", END]
    return "\n".join(lines)


def _main_row(s: AlgorithmSummary) -> str:
    if not s.n:
        return f"| {s.algorithm} | " + " | ".join(["—"] * 8) + " | 0 |"
    cells = [_pm(s, "final"), _pm(s, "best"), _pm(s, "auc"), f"{s.stat('drop')[0]:.3f}",
             *(_opt(s.mean_of(k), ".3f") for k in ("leak_rate", "accept_rate", "gate_frac")),
             _opt(s.mean_of("step_s"), ".2f"), str(s.n)]
    return f"| {s.algorithm} | " + " | ".join(cells) + " |"


def _long_row(s: AlgorithmSummary) -> str:
    if not s.n:
        return f"| {s.algorithm} | — | — | — | — |"
    cells = [_pm(s, "final"), _pm(s, "best"), f"{s.stat('drop')[0]:.3f}", f"{s.stat('peak_step')[0]:.0f}"]
    return f"| {s.algorithm} | " + " | ".join(cells) + " |"


def _pm(s: AlgorithmSummary, name: str) -> str:
    """``mean ± std`` over seeds, or the value alone for one seed."""
    mean, std = s.stat(name)
    return f"{mean:.3f}" if s.n == 1 else f"{mean:.3f} ± {std:.3f}"


def _opt(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def write_results_markdown(path: str | Path, block: str) -> Path:
    """Put ``block`` between the compare markers of ``path``, keeping everything else; append it when the file has
    no markers; create a minimal file when there is none."""
    path = Path(path)
    if not path.exists():
        text = f"# Results\n\n{block}\n"
    else:
        old = path.read_text()
        start, end = old.find(BEGIN), old.find(END)
        if start >= 0 and end > start:
            text = old[:start] + block + old[end + len(END):]
        else:
            text = old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def plot_comparison(summaries: Sequence[AlgorithmSummary], long: Sequence[AlgorithmSummary], out: str | Path,
                    title: str) -> Path:
    """Eval pass@1 against step: per algorithm the mean over seeds (line) and the min-max over seeds (shaded);
    the long runs in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(summaries, "same budget: mean over seeds, min-max shaded")]
    if long:
        panels.append((long, "long runs, seed 0"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (group, subtitle) in zip(axes[0], panels):
        for s in group:
            _plot_algorithm(ax, s)
        ax.set_title(subtitle)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out pass@1")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _plot_algorithm(ax: Any, s: AlgorithmSummary) -> None:
    """Mean line and min-max band over the eval steps every seed has."""
    if not s.n:
        return
    steps = sorted(set.intersection(*(set(r.steps) for r in s.runs)))
    per_seed = [[r.pass1[r.steps.index(x)] for x in steps] for r in s.runs]
    columns = list(zip(*per_seed))
    colour = COLOURS.get(s.algorithm)
    ax.plot(steps, [sum(c) / len(c) for c in columns], "o-", color=colour, lw=2, ms=3, label=f"{s.algorithm} (n={s.n})")
    if s.n > 1:
        ax.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns], color=colour, alpha=0.18, lw=0)


# -- command line ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Options generated from CompareSpec's fields (one description each, no second copy)."""
    parser = argparse.ArgumentParser(
        prog="amrsd-train compare", description="Train every (algorithm, seed) on the same tasks and budget, one "
        "subprocess after another, then write the results table and the eval-curve plot.")
    for name, spec_field in CompareSpec.model_fields.items():
        if name != "overrides":
            parser.add_argument("--" + name.replace("_", "-"), dest=name, metavar=name.split("_")[-1].upper(),
                                required=spec_field.is_required(), default=None, help=_help(spec_field))
    parser.add_argument("overrides", nargs="*", help=CompareSpec.model_fields["overrides"].description)
    return parser


def _help(spec_field: Any) -> str:
    if spec_field.is_required():
        return spec_field.description
    default = spec_field.get_default(call_default_factory=True)
    return f"{spec_field.description} Default: {','.join(default) if isinstance(default, list) else default}."


def _title(spec: CompareSpec) -> str:
    from amrsd_train.run import load_config

    cfg = load_config(spec.config, spec.overrides)
    tasks = ", ".join(cfg.families or cfg.envs)
    return f"held-out pass@1 on {tasks} ({cfg.model}, {spec.steps} steps, {spec.seeds} seed{'s' * (spec.seeds > 1)})"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_intermixed_args(argv)
    data = {k: v for k, v in vars(args).items() if v is not None}
    try:
        spec = validated(CompareSpec, data, source="amrsd-train compare")
        runs = plan_runs(spec)
        validate_runs(runs)
    except ValueError as exc:
        print(f"amrsd-train compare: {exc}", file=sys.stderr)
        return 2
    if spec.summarise_only:
        return _report(spec, [], "amrsd-train compare " + shlex.join(argv))
    print(f"{len(runs)} runs, configs valid; logs in each run's compare.log", flush=True)
    outcomes = run_all(runs, launch=launch_subprocess)
    return _report(spec, outcomes, "amrsd-train compare " + shlex.join(argv))


def _report(spec: CompareSpec, outcomes: Sequence[RunOutcome], command: str) -> int:
    """Write the table and the plot from whatever finished; 1 when a run failed."""
    summaries = summarise(spec.root, spec.algorithms, spec.seeds, steps=spec.steps)
    long = (summarise(Path(spec.root) / "long", spec.long_algorithms, 1, steps=spec.long_steps)
            if spec.long_steps is not None else [])
    block = results_block(summaries, long, collect_provenance(command), spec.steps, spec.long_steps)
    print(f"results: {write_results_markdown(spec.results, block)}")
    print(f"plot:    {plot_comparison(summaries, long, spec.plot, _title(spec))}")
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"failed: {o.run.label} (exit {o.returncode}); log: {o.run.log_path}", file=sys.stderr)
    return 1 if failed else 0
