"""Command lines: ``amrsd-tasks`` (list, validate, schema) and ``amrsd-eval``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table


def _console() -> Console:
    """A console that does not squeeze tables to 80 columns when the output is a pipe or a file."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def tasks_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amrsd-tasks", description="Inspect and validate AMR-SD task files.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_list = sub.add_parser("list", help="families and instance counts")
    p_list.add_argument("path", nargs="?", default=None, help="tasks directory (default: built-in tasks/)")
    p_list.add_argument("--domain", default=None)
    p_val = sub.add_parser("validate", help="check task files; exit 1 listing every problem")
    p_val.add_argument("paths", nargs="*", default=[None],
                       help="files or directories (default: the built-in suite and installed plugin suites)")
    p_schema = sub.add_parser("schema", help="print the JSON Schema of a task file")
    p_schema.add_argument("--out", default=None, help="write to this file instead of stdout")
    args = parser.parse_args(argv)

    from amrsd_envs.catalog import load_tasks
    from amrsd_envs.errors import TaskSpecError
    from amrsd_envs.plugins import PluginError
    from amrsd_envs.spec import task_spec_json_schema

    console = _console()
    if args.cmd == "schema":
        text = json.dumps(task_spec_json_schema(), indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")
        else:
            print(text)
        return 0
    if args.cmd == "validate":
        issues = []
        n_ok = 0
        for p in args.paths:
            try:
                n_ok += len(load_tasks(p))
            except TaskSpecError as exc:
                issues.extend(exc.issues)
            except PluginError as exc:
                issues.append(str(exc))
        for issue in issues:
            console.print(f"[red]error[/red] {issue}", highlight=False)
        console.print(f"{n_ok} valid famil{'y' if n_ok == 1 else 'ies'}, {len(issues)} problem(s)")
        return 1 if issues else 0
    try:
        catalog = load_tasks(args.path, domain=args.domain)
    except (TaskSpecError, PluginError) as exc:
        console.print(str(exc), highlight=False)
        return 1
    table = Table(title="AMR-SD task families")
    for col in ("family", "domain", "kind", "instances", "levels", "verifier", "tools", "max_turns"):
        table.add_column(col)
    for fam in catalog:
        s = fam.spec
        table.add_row(
            s.id, s.domain, s.kind, str(len(fam)), str(s.difficulty.levels), s.verifier.type,
            ",".join(s.tools) or "-", str(s.max_turns),
        )
    console.print(table)
    return 0


def _load_policy(spec: str):
    """``oracle``, ``openai``, or ``module:function`` for a Python callable."""
    if spec in ("oracle", "openai"):
        return spec
    if ":" not in spec:
        raise SystemExit(f"--policy must be 'oracle', 'openai' or 'module:callable', got {spec!r}")
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod), attr)


def eval_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amrsd-eval", description="Evaluate a policy on an AMR-SD environment.")
    parser.add_argument("--env", required=True, help="env id, e.g. AMRSD-Math-v0")
    parser.add_argument("--policy", default="oracle", help="oracle | openai | module:callable")
    parser.add_argument("--n-tasks", type=int, default=50, help="tasks to evaluate (round-robin over families)")
    parser.add_argument("-k", type=int, default=1, help="k of pass@k")
    parser.add_argument("--n-samples", type=int, default=None, help="episodes per task (default k)")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="*", default=None, help="family ids or globs")
    parser.add_argument("--tasks", default=None, help="tasks directory (default: built-in)")
    parser.add_argument("--base-url", default=None, help="openai policy: server base URL (.../v1)")
    parser.add_argument("--model", default=None, help="openai policy: model name")
    parser.add_argument("--temperature", type=float, default=0.0, help="openai policy: sampling temperature")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)

    import amrsd_envs  # noqa: F401  (registers the ids)
    from amrsd_envs.evaluate import evaluate

    env_kwargs = {}
    if args.families:
        env_kwargs["families"] = args.families
    if args.tasks:
        env_kwargs["tasks"] = args.tasks
    options = {}
    if args.policy == "openai":
        options = {"base_url": args.base_url, "model": args.model, "temperature": args.temperature}
    report = evaluate(
        args.env,
        _load_policy(args.policy),
        n_tasks=args.n_tasks,
        k=args.k,
        n_samples=args.n_samples,
        split=args.split,
        seed=args.seed,
        env_kwargs=env_kwargs,
        policy_options=options,
    )
    console = _console()
    table = Table(title=f"{report.env_id} — policy {report.policy} — {report.split} split")
    table.add_column("family")
    table.add_column("tasks", justify="right")
    table.add_column("pass@1", justify="right")
    with_k = report.k > 1
    if with_k:
        table.add_column(f"pass@{report.k}", justify="right")
    for name, n, p1, pk in [
        *((fam, s.n_tasks, s.pass_at_1, s.pass_at_k) for fam, s in report.per_family.items()),
        ("[b]overall[/b]", report.n_tasks, report.pass_at_1, report.pass_at_k),
    ]:
        table.add_row(name, str(n), f"{100 * p1:.1f}%", *([f"{100 * pk:.1f}%"] if with_k else []))
    console.print(table)
    _print_bfcl_scores(console, report)
    if args.out:
        Path(args.out).write_text(report.model_dump_json(indent=2))
        console.print(f"report written to {args.out}")
    return 0


def _print_bfcl_scores(console: Any, report: Any) -> None:
    """BFCL-style accuracy per category and BFCL's summaries, when the report has ``bfcl.*`` families."""
    from amrsd_envs.evaluate import bfcl_scores

    scores = bfcl_scores(report)
    if not scores:
        return
    table = Table(title=f"BFCL accuracy, {report.split} split")
    table.add_column("category")
    table.add_column("accuracy", justify="right")
    for name, value in scores.items():
        table.add_row(f"[b]{name}[/b]" if name in ("non_live_ast", "live_ast") else name, f"{100 * value:.2f}%")
    console.print(table)


if __name__ == "__main__":
    sys.exit(eval_main())
