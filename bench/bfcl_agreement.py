"""Agreement of the ``bfcl_ast`` verifier with BFCL's own checker, on oracle answers and systematic mutations.

For every task of the seven BFCL families (``tasks/datasets/bfcl_*.yaml``) it builds the oracle response (the first
allowed value of each argument, :meth:`BfclAstVerifier.oracle_response`) and mutations of it, one per class that
applies to the task (:data:`MUTATIONS`): the wrong function, a missing required argument, an unknown argument, a
value of the wrong type, a wrong value, the parallel calls reordered, a call where none fits, no call where one is
needed, plus answers that must pass (an int for a float, another allowed value, an optional argument left out, a
string written another way). Each response is judged by ``bfcl_ast`` here and by BFCL's checker in BFCL's own venv
(``bench/bfcl_worker.py``, one batch), and the script prints agreement per category and per mutation class, and every
class of disagreement with an example.

    .venv/bin/python bench/bfcl_agreement.py                       # all tasks, every mutation class
    .venv/bin/python bench/bfcl_agreement.py --record tests/data/bfcl_checker_verdicts.jsonl \
        --responses tests/data/bfcl_smollm2_responses.jsonl          # ... and a real model's answers

``--responses FILE`` (repeatable) adds real model answers: JSON lines with ``task_id`` and ``text`` (and ``model``,
the row's class in the tables; else the file's stem), as ``bench/bfcl_smollm2.py`` writes them; both checkers judge
them like the mutations. ``--only-responses`` leaves the mutations out. ``--record PATH`` also writes BFCL's verdicts
on a fixed subset (``--per-class`` responses of each mutation class and category, default 4, and every real answer)
for ``tests/test_bfcl.py``, which checks ``bfcl_ast`` against them without BFCL's venv.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from amrsd_envs.catalog import load_tasks  # noqa: E402
from amrsd_envs.toolcalls import ToolCall, render_tool_calls  # noqa: E402
from amrsd_envs.verifiers import check  # noqa: E402
from amrsd_envs.verifiers.bfcl_ast import find_function, parse_gold, reference_calls  # noqa: E402

RECORD_COMMAND = (".venv/bin/python bench/bfcl_agreement.py --record tests/data/bfcl_checker_verdicts.jsonl "
                  "--responses tests/data/bfcl_smollm2_responses.jsonl")
BFCL_STEMS = {"simple": "simple_python"}  # family suffix -> BFCL's file stem, where they differ
FAMILIES = ["bfcl.simple", "bfcl.multiple", "bfcl.parallel", "bfcl.parallel_multiple", "bfcl.live_simple",
            "bfcl.live_multiple", "bfcl.irrelevance"]
"""The single-turn families (``bfcl_ast``); multi_turn_base has its own script, bench/bfcl_multi_turn_agreement.py."""
Calls = list[tuple[str, dict[str, Any]]]


# -- mutations: (task gold, oracle calls) -> calls, or None where the class does not apply ---------------------------


def _render(calls: Calls) -> str:
    return render_tool_calls([ToolCall(name=n, arguments=a) for n, a in calls]) if calls else "I cannot help."


def _params(gold: dict[str, Any], name: str) -> dict[str, Any]:
    return find_function(gold["functions"], name)["parameters"]


def _other_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, dict):
        return list(value.values())
    return 0


def _other_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7919
    if isinstance(value, float):
        return value * 3.5 + 1.25
    if isinstance(value, str):
        return value + " zebra quartz"
    if isinstance(value, list):
        return [*value, value[0]] if value else ["zebra"]
    if isinstance(value, dict):
        return {**value, "zebra_key": "quartz"}
    return "zebra"


def wrong_function(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    others = [f["name"] for f in gold["functions"] if f["name"] != name]
    return [(rng.choice(others) if others else name + "_v2", args), *calls[1:]]


def missing_required(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    required = [p for p in _params(gold, name).get("required", []) if p in args]
    if not required:
        return None
    drop = rng.choice(required)
    return [(name, {k: v for k, v in args.items() if k != drop}), *calls[1:]]


def extra_arg(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    return [(name, {**args, "zebra_option": "quartz"}), *calls[1:]]


def wrong_type(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    if not args:
        return None
    key = rng.choice(sorted(args))
    return [(name, {**args, key: _other_type(args[key])}), *calls[1:]]


def wrong_value(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    if not args:
        return None
    key = rng.choice(sorted(args))
    return [(name, {**args, key: _other_value(args[key])}), *calls[1:]]


def reordered(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    if gold["match"] != "parallel" or len(calls) < 2:
        return None
    return calls[::-1] if len(calls) == 2 else rng.sample(calls, len(calls))


def dropped_call(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    return calls[:-1] if gold["match"] == "parallel" and len(calls) >= 2 else None


def duplicated_call(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    return [*calls, calls[0]]


def no_call(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    return []


def call_on_irrelevance(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    function = rng.choice(gold["functions"])
    samples = {"string": "zebra", "integer": 3, "float": 2.5, "boolean": True, "array": ["zebra"], "tuple": [1],
               "dict": {"zebra": 1}, "any": "zebra"}
    params = function["parameters"]
    args = {p: samples.get(params["properties"].get(p, {}).get("type"), "zebra") for p in params.get("required", [])}
    return [(function["name"], args)]


def int_for_float(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    props = _params(gold, name).get("properties", {})
    keys = [k for k, v in args.items() if props.get(k, {}).get("type") == "float" and isinstance(v, float)
            and v.is_integer()]
    if not keys:
        return None
    return [(name, {**args, **{k: int(args[k]) for k in keys}}), *calls[1:]]


def other_allowed_value(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    allowed = next(iter(gold["ground_truth"][0].values())) if gold["match"] == "one" else None
    if allowed is None:
        return None
    keys = [k for k in args if len([v for v in allowed.get(k, []) if v != ""]) > 1]
    if not keys:
        return None
    key = rng.choice(sorted(keys))
    return [(name, {**args, key: [v for v in allowed[key] if v != ""][1]}), *calls[1:]]


def optional_left_out(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    allowed = next(iter(gold["ground_truth"][0].values())) if gold["match"] == "one" else None
    required = set(_params(gold, name).get("required", []))
    if allowed is None:
        return None
    keys = [k for k in args if k not in required and "" in allowed.get(k, [])]
    if not keys:
        return None
    drop = rng.choice(sorted(keys))
    return [(name, {k: v for k, v in args.items() if k != drop}), *calls[1:]]


def string_rewritten(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    name, args = calls[0]
    keys = [k for k, v in args.items() if isinstance(v, str) and v.strip()]
    if not keys:
        return None
    key = rng.choice(sorted(keys))
    return [(name, {**args, key: args[key].upper().replace(" ", "  ") + "."}), *calls[1:]]


def oracle(gold: dict, calls: Calls, rng: random.Random) -> Calls | None:
    return calls


Mutation = Callable[[dict, Calls, random.Random], "Calls | None"]
MUTATIONS: dict[str, tuple[Mutation, str]] = {
    # name: (mutation, which tasks: "relevant" | "irrelevance" | "any")
    "oracle": (oracle, "any"),
    "wrong_function": (wrong_function, "relevant"),
    "missing_required": (missing_required, "relevant"),
    "extra_arg": (extra_arg, "relevant"),
    "wrong_type": (wrong_type, "relevant"),
    "wrong_value": (wrong_value, "relevant"),
    "reordered_parallel": (reordered, "relevant"),
    "dropped_call": (dropped_call, "relevant"),
    "duplicated_call": (duplicated_call, "relevant"),
    "no_call": (no_call, "relevant"),
    "call_on_irrelevance": (call_on_irrelevance, "irrelevance"),
    "int_for_float": (int_for_float, "relevant"),
    "other_allowed_value": (other_allowed_value, "relevant"),
    "optional_left_out": (optional_left_out, "relevant"),
    "string_rewritten": (string_rewritten, "relevant"),
}


def responses(catalog: Any) -> Iterator[dict[str, Any]]:
    """Every (task, mutation class) response, with the task id, BFCL's id and file stem, and the text."""
    for family in catalog:
        suffix = family.id.split(".", 1)[1]
        stem = BFCL_STEMS.get(suffix, suffix)
        for index in range(len(family)):
            task = family.instance(index)
            gold = parse_gold(task.answer)
            calls = reference_calls(task.answer)
            rng = random.Random(f"{task.id}")
            for name, (mutate, applies) in MUTATIONS.items():
                if applies != "any" and (applies == "irrelevance") != (gold["match"] == "none"):
                    continue
                mutated = mutate(gold, calls, rng)
                if mutated is None:
                    continue
                yield {"task_id": task.id, "id": task.id.split("/", 1)[1], "category": stem, "family": family.id,
                       "mutation": name, "text": _render(mutated)}


def real_responses(catalog: Any, path: Path) -> Iterator[dict[str, Any]]:
    """The answers of a responses file (``task_id``, ``text``, optional ``model``) as rows like :func:`responses`'s;
    the class is ``real:<model>``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        answer = json.loads(line)
        task = catalog.get(answer["task_id"])
        suffix = task.family_id.split(".", 1)[1]
        yield {"task_id": task.id, "id": task.id.split("/", 1)[1], "category": BFCL_STEMS.get(suffix, suffix),
               "family": task.family_id, "mutation": f"real:{answer.get('model', path.stem)}", "text": answer["text"]}


def bfcl_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL's verdict on each row, from ``bench/bfcl_worker.py`` in BFCL's venv (one subprocess, one batch)."""
    from bfcl_env import ensure_bfcl_venv

    python = ensure_bfcl_venv()
    payload = "".join(json.dumps({"key": i, "id": r["id"], "category": r["category"], "text": r["text"]}) + "\n"
                      for i, r in enumerate(rows))
    done = subprocess.run([str(python), str(REPO / "bench" / "bfcl_worker.py")], input=payload, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bfcl_worker failed:\n{done.stderr[-3000:]}")
    out = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if [o["key"] for o in out] != list(range(len(rows))):
        raise RuntimeError("bfcl_worker answered a different set of requests")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, default=None, help="Write BFCL's verdicts on a fixed subset here.")
    parser.add_argument("--per-class", type=int, default=4, help="Recorded responses per mutation class and family.")
    parser.add_argument("--responses", type=Path, action="append", default=[],
                        help="Real answers to judge too (JSON lines: task_id, text, model); repeatable.")
    parser.add_argument("--only-responses", action="store_true", help="Judge the --responses only, no mutations.")
    args = parser.parse_args()

    catalog = load_tasks(families=FAMILIES)
    rows = [] if args.only_responses else list(responses(catalog))
    for path in args.responses:
        rows += real_responses(catalog, path)
    started = time.perf_counter()
    for row in rows:
        row["ours"] = check("bfcl_ast", catalog.get(row["task_id"]).answer, row["text"]).correct
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = bfcl_verdicts(rows)
    theirs_s = time.perf_counter() - started
    for row, verdict in zip(rows, theirs):
        row["bfcl"], row["bfcl_error_type"] = verdict["valid"], verdict["error_type"]

    families = len({r["family"] for r in rows})
    print(f"{len(rows)} responses over {families} families; bfcl_ast {ours_s:.1f} s, BFCL's checker "
          f"{theirs_s:.1f} s (subprocess, imports included)\n")
    _table("family", rows, lambda r: r["family"])
    _table("mutation class", rows, lambda r: r["mutation"])
    real = [r for r in rows if r["mutation"].startswith("real:")]
    if real:
        _table("real answers, family", real, lambda r: f"{r['mutation']} {r['family']}")
    disagreements = collections.defaultdict(list)
    for row in rows:
        if row["ours"] != row["bfcl"]:
            disagreements[(row["mutation"], row["ours"], row["bfcl"], row["bfcl_error_type"])].append(row)
    agree = sum(r["ours"] == r["bfcl"] for r in rows)
    print(f"overall agreement: {agree}/{len(rows)} = {agree / len(rows):.4%}")
    for (mutation, ours, bfcl, error_type), group in sorted(disagreements.items()):
        example = group[0]
        print(f"\nDISAGREEMENT {mutation}: bfcl_ast={ours} BFCL={bfcl} ({error_type}), {len(group)} case(s); e.g. "
              f"{example['task_id']}:\n{example['text'][:600]}")
    if args.record is not None:
        _record(args.record, rows, args.per_class)


def _table(title: str, rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> None:
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    print(f"| {title} | responses | BFCL accepts | bfcl_ast accepts | agreement |\n|---|---:|---:|---:|---:|")
    for name, group in sorted(groups.items()):
        agree = sum(r["ours"] == r["bfcl"] for r in group)
        print(f"| {name} | {len(group)} | {sum(r['bfcl'] for r in group)} | {sum(r['ours'] for r in group)} | "
              f"{agree}/{len(group)} ({agree / len(group):.2%}) |")
    print()


def _record(path: Path, rows: list[dict[str, Any]], per_class: int) -> None:
    """The first ``per_class`` responses of each (family, mutation class), every real answer and every
    disagreement, as JSON lines."""
    seen: collections.Counter = collections.Counter()
    chosen = []
    for row in rows:
        key = (row["family"], row["mutation"])
        if seen[key] < per_class or row["ours"] != row["bfcl"] or row["mutation"].startswith("real:"):
            seen[key] += 1
            chosen.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"generated_by": RECORD_COMMAND, "bfcl_eval": "2026.3.23", "responses": len(chosen)})
                 + "\n")
        for row in chosen:
            fh.write(json.dumps({"task_id": row["task_id"], "mutation": row["mutation"], "text": row["text"],
                                 "bfcl_valid": row["bfcl"], "bfcl_error_type": row["bfcl_error_type"]},
                                ensure_ascii=False) + "\n")
    print(f"\nrecorded {len(chosen)} verdicts to {path}")


if __name__ == "__main__":
    main()
