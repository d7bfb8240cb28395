"""``amrsd-train compare``: statistics from real metrics files, the results block, the plot, early validation and
resuming. Runs are faked by writing what a finished run leaves (metrics.jsonl and a complete checkpoint folder);
no model is trained here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from amrsd_train import compare
from amrsd_train.checkpoint import MARKER
from amrsd_train.compare import (
    BEGIN,
    END,
    AlgorithmSummary,
    PlannedRun,
    Provenance,
    SeedResult,
    curve_mean,
    drop_from_peak,
    launch_subprocess,
    plot_comparison,
    results_block,
    summarise,
    write_results_markdown,
)

PROVENANCE = Provenance("amrsd-train compare --steps 30", "abc1234", False, "Linux, 2 CPUs (test CPU)", "2025-01-01")


def write_run(out_dir: Path, evals: dict[int, float], train_rows: list[dict] = (), checkpoint: int | None = None):
    """What a run leaves behind: metrics.jsonl (eval rows merged into train rows of the same step) and a checkpoint."""
    rows = {step: {"step": step, **row} for step, row in ((r["step"], r) for r in train_rows)}
    for step, value in evals.items():
        rows.setdefault(step, {"step": step})["eval/pass@1"] = value
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(rows[s]) + "\n" for s in sorted(rows)))
    if checkpoint is not None:
        ckpt = out_dir / "checkpoints" / f"step_{checkpoint:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / MARKER).write_text("ok\n")


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text("model: tiny\nfamilies: [tooluse.calc_arith]\ngroup_size: 4\ntasks_per_step: 2\neval_every: 10\n")
    return path


def test_curve_mean_and_drop_from_peak():
    # trapezoids on uneven steps: (10 * (0 + 1) / 2 + 30 * (1 + 1) / 2) / 40 = 35 / 40
    assert curve_mean([0, 10, 40], [0.0, 1.0, 1.0]) == pytest.approx(0.875)
    assert curve_mean([5], [0.3]) == pytest.approx(0.3)
    # running peak 0.3 0.3 0.5 0.5 0.5: the largest fall is 0.5 -> 0.2, not the first (0.2) nor max - min (0.4)
    assert drop_from_peak([0.3, 0.1, 0.5, 0.2, 0.4]) == pytest.approx(0.3)
    assert drop_from_peak([0.1, 0.2, 0.2, 0.6]) == 0.0


def test_summarise_hand_computed(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "grpo" / "seed_0", {0: 0.2, 10: 0.5, 20: 0.3, 30: 0.4}, [
        {"step": 10, "time/step_s": 1.0, "reflect/leak_rate": 0.1},
        {"step": 20, "time/step_s": 2.0},
        {"step": 30, "time/step_s": 3.0, "reflect/leak_rate": 0.3},
    ])
    write_run(root / "grpo" / "seed_1", {0: 0.1, 10: 0.2, 20: 0.4, 30: 0.6},
              [{"step": s, "time/step_s": 4.0} for s in (10, 20, 30)])
    write_run(root / "grpo" / "seed_2", {0: 0.9, 10: 0.9})  # stopped at step 10: not a result at 30 steps
    grpo, amrsd = summarise(root, ["grpo", "amrsd"], 3, steps=30)

    assert grpo.n == 2 and amrsd.n == 0
    s0, s1 = grpo.runs
    assert (s0.final, s0.best, s0.peak_step) == (0.4, 0.5, 10)
    assert s0.auc == pytest.approx((3.5 + 4.0 + 3.5) / 30)
    assert s1.auc == pytest.approx((1.5 + 3.0 + 5.0) / 30)
    assert (s0.drop, s1.drop) == (pytest.approx(0.2), 0.0)
    assert grpo.stat("final") == (pytest.approx(0.5), pytest.approx(0.1 * 2 ** 0.5))  # sample std of 0.4, 0.6
    assert grpo.stat("best") == (pytest.approx(0.55), pytest.approx(0.05 * 2 ** 0.5))
    assert grpo.stat("auc")[0] == pytest.approx(20.5 / 60)
    assert grpo.stat("drop")[0] == pytest.approx(0.1)
    assert grpo.mean_of("leak_rate") == pytest.approx(0.2)  # only seed 0 logged it
    assert grpo.mean_of("step_s") == pytest.approx((2.0 + 4.0) / 2)
    assert grpo.mean_of("accept_rate") is None
    assert summarise(root, ["grpo"], 3)[0].n == 3  # without steps, any run with an eval counts

    table = results_block([grpo, amrsd], [], PROVENANCE, 30, None)
    assert "| grpo | 0.500 ± 0.141 | 0.550 ± 0.071 | 0.342 ± 0.035 | 0.100 | 0.200 | — | — | 3.00 | 2 |" in table
    assert "| amrsd | — | — | — | — | — | — | — | — | 0 |" in table
    assert "`amrsd-train compare --steps 30` at commit `abc1234` (clean tree) on Linux, 2 CPUs (test CPU)" in table


def test_long_table_gives_value_and_step_of_peak(tmp_path):
    write_run(tmp_path / "long" / "amrsd" / "seed_0", {0: 0.1, 50: 0.7, 100: 0.4}, checkpoint=100)
    (long,) = summarise(tmp_path / "long", ["amrsd"], 1, steps=100)
    table = results_block([], [long], PROVENANCE, 30, 100)
    assert "Long runs: 100 steps" in table
    assert "| amrsd | 0.400 | 0.700 | 0.300 | 50 |" in table


def test_results_block_replaced_and_prose_kept(tmp_path):
    path = tmp_path / "docs" / "RESULTS.md"
    write_results_markdown(path, f"{BEGIN}\nfirst table\n{END}")
    assert path.read_text() == f"# Results\n\n{BEGIN}\nfirst table\n{END}\n"

    path.write_text(f"# Results\n\nIntro prose.\n\n{BEGIN}\nfirst table\n{END}\n\nDiscussion after.\n")
    write_results_markdown(path, f"{BEGIN}\nsecond table\n{END}")
    assert path.read_text() == f"# Results\n\nIntro prose.\n\n{BEGIN}\nsecond table\n{END}\n\nDiscussion after.\n"

    plain = tmp_path / "plain.md"
    plain.write_text("Only prose.\n")
    write_results_markdown(plain, f"{BEGIN}\nt\n{END}")
    assert plain.read_text() == f"Only prose.\n\n{BEGIN}\nt\n{END}\n"


def test_plot_is_written_and_readable(tmp_path):
    import matplotlib.image

    seeds = [SeedResult(s, [0, 10, 20], [0.1 + s / 10, 0.3, 0.2 + s / 20], {}) for s in range(3)]
    summaries = [AlgorithmSummary("grpo", seeds), AlgorithmSummary("amrsd", seeds[:1]), AlgorithmSummary("rlsd", [])]
    long = [AlgorithmSummary("amrsd", [SeedResult(0, [0, 50, 100], [0.1, 0.5, 0.4], {})])]
    out = plot_comparison(summaries, long, tmp_path / "fig" / "results.png", "held-out pass@1 on tooluse.calc_arith")
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 300  # two panels side by side
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.parametrize("args, named", [
    (["--algorithms", "grpo,amrds"], "amrds"),
    (["--long-steps", "50", "--long-algorithms", "raw-sd"], "raw-sd"),
    (["lrr=1e-3"], "lrr"),
    (["amrsd.tau_pos=-1"], "amrsd.tau_pos"),
    (["seed=4"], "seed=4"),
])
def test_bad_name_or_override_fails_before_any_run(tmp_path, monkeypatch, capsys, args, named):
    started = []
    monkeypatch.setattr(compare, "run_all", lambda *a, **k: started.append(a))
    root = tmp_path / "runs"
    argv = ["--config", str(write_config(tmp_path)), "--steps", "20", "--root", str(root), *args]
    assert compare.main(argv) == 2
    assert named in capsys.readouterr().err
    assert started == [] and not root.exists()


def test_compare_dispatch_from_amrsd_train_main(tmp_path, capsys):
    from amrsd_train.run import main

    assert main(["compare", "--config", str(write_config(tmp_path)), "--steps", "5", "--seeds", "0"]) == 2
    assert "seeds" in capsys.readouterr().err


def fake_launcher(launched: list[str], fail: set[str] = frozenset()):
    """Stands in for the trainer subprocess: writes a finished run's files (or nothing, for a failing run)."""

    def launch(run: PlannedRun) -> int:
        launched.append(run.label)
        if run.label in fail:
            return 1
        write_run(run.output_dir, {0: 0.1, run.steps: 0.2 + 0.1 * run.seed}, checkpoint=run.steps)
        return 0

    return launch


def test_complete_runs_are_skipped_and_partial_ones_rerun(tmp_path, monkeypatch, capsys):
    root, results = tmp_path / "runs", tmp_path / "RESULTS.md"
    write_run(root / "grpo" / "seed_0", {0: 0.1, 3: 0.5}, checkpoint=3)  # finished earlier
    write_run(root / "amrsd" / "seed_1", {0: 0.1}, checkpoint=1)  # killed after step 1
    launched: list[str] = []
    monkeypatch.setattr(compare, "launch_subprocess", fake_launcher(launched))
    argv = ["--config", str(write_config(tmp_path)), "--algorithms", "grpo,amrsd", "--seeds", "2", "--steps", "3",
            "--root", str(root), "--results", str(results), "--plot", str(tmp_path / "results.png")]

    assert compare.main(argv) == 0
    assert launched == ["grpo seed 1", "amrsd seed 0", "amrsd seed 1"]
    first = capsys.readouterr().out
    assert "[1/4] grpo seed 0: complete already, skipped; final pass@1 0.500" in first
    assert "[4/4] amrsd seed 1: done in" in first

    launched.clear()
    assert compare.main(argv) == 0
    assert launched == []
    assert capsys.readouterr().out.count("complete already, skipped") == 4
    text = results.read_text()
    assert text.count(BEGIN) == 1 and "| grpo | 0.400 ± 0.141 |" in text  # finals 0.5 and 0.3
    assert f"`amrsd-train compare {' '.join(argv[:2])}" in text and "CPUs (" in text
    assert (tmp_path / "results.png").stat().st_size > 0


def test_a_failed_run_is_reported_and_the_rest_go_on(tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    launched: list[str] = []
    monkeypatch.setattr(compare, "launch_subprocess", fake_launcher(launched, fail={"grpo seed 0"}))
    argv = ["--config", str(write_config(tmp_path)), "--algorithms", "grpo,rlsd", "--seeds", "2", "--steps", "3",
            "--long-steps", "6", "--long-algorithms", "amrsd", "--root", str(root),
            "--results", str(tmp_path / "R.md"), "--plot", str(tmp_path / "r.png")]

    assert compare.main(argv) == 1
    assert launched == ["grpo seed 0", "grpo seed 1", "rlsd seed 0", "rlsd seed 1", "long amrsd seed 0"]
    captured = capsys.readouterr()
    log = root / "grpo" / "seed_0" / "compare.log"
    assert "[1/5] grpo seed 0: FAILED (exit 1)" in captured.out and str(log) in captured.out
    assert f"failed: grpo seed 0 (exit 1); log: {log}" in captured.err
    text = (tmp_path / "R.md").read_text()
    assert "| grpo | 0.300 | 0.300 |" in text and text.count("| 2 |") == 1  # grpo from seed 1 alone; rlsd has 2
    assert (root / "long" / "amrsd" / "seed_0" / "metrics.jsonl").exists()


def test_run_command_and_real_subprocess_log(tmp_path):
    run = PlannedRun(str(tmp_path / "missing.yaml"), "rlsd", 1, 7, tmp_path / "rlsd" / "seed_1", ("lr=1e-4",))
    assert run.command() == [sys.executable, "-m", "amrsd_train", "--config", str(tmp_path / "missing.yaml"),
                             "lr=1e-4", "algorithm=rlsd", "seed=1", "total_steps=7", f"output_dir={run.output_dir}"]
    # the real child process: `python -m amrsd_train` starts, refuses the missing config, exits 2
    assert launch_subprocess(run) == 2
    log = run.log_path.read_text()
    assert log.startswith(f"\n$ {sys.executable} -m amrsd_train") and "cannot read config" in log


def test_summarise_only_starts_nothing_and_counts_the_seeds_that_finished(tmp_path, monkeypatch):
    root, results = tmp_path / "runs", tmp_path / "RESULTS.md"
    write_run(root / "grpo" / "seed_0", {0: 0.1, 3: 0.5}, checkpoint=3)
    write_run(root / "grpo" / "seed_1", {0: 0.1, 3: 0.3}, checkpoint=3)
    write_run(root / "amrsd" / "seed_0", {0: 0.1, 3: 0.6}, checkpoint=3)
    launched: list[str] = []
    monkeypatch.setattr(compare, "launch_subprocess", fake_launcher(launched))
    argv = ["--config", str(write_config(tmp_path)), "--algorithms", "grpo,amrsd", "--seeds", "3", "--steps", "3",
            "--root", str(root), "--results", str(results), "--plot", str(tmp_path / "results.png"),
            "--summarise-only", "true"]
    assert compare.main(argv) == 0 and launched == []
    text = results.read_text()
    assert "| grpo | 0.400 ± 0.141 |" in text and "| amrsd | 0.600 |" in text
    assert not (root / "grpo" / "seed_2").exists()
