"""Judge responses with BFCL's own evaluation code; run with the BFCL venv's python (``bench/bfcl_env.py``).

Reads JSON lines on stdin, ``{"key": ..., "id": "<BFCL task id>", "category": "<BFCL file stem>", "text": "<the
assistant message>"}``, and writes one JSON line per request on stdout, ``{"key": ..., "valid": bool,
"error_type": str | null}``, in the same order. Nothing here comes from the project: the task's function docs and
possible answers are read from this venv's own ``bfcl_eval`` data by id, and each response goes through the same
steps as in ``bfcl evaluate`` for the Qwen function-calling handler (``Qwen/Qwen3-8B-FC``; Hermes ``<tool_call>``
blocks, function names kept with their dots): ``handler.decode_ast``, then ``_evaluate_single_ast_entry`` (format
check and ``ast_checker``) or, for irrelevance, ``_evaluate_single_relevance_entry``.
"""

from __future__ import annotations

import json
import sys
from importlib import resources

from bfcl_eval.constants.enums import Language, ReturnFormat
from bfcl_eval.eval_checker import eval_runner

MODEL = "Qwen/Qwen3-8B-FC"


def _lines(relative: str) -> dict[str, dict]:
    text = resources.files("bfcl_eval").joinpath("data").joinpath(relative).read_text(encoding="utf-8")
    return {row["id"]: row for row in map(json.loads, filter(str.strip, text.splitlines()))}


def main() -> None:
    handler = eval_runner.get_handler(MODEL)
    tasks: dict[str, dict[str, dict]] = {}
    answers: dict[str, dict[str, dict]] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        category = request["category"]
        if category not in tasks:
            tasks[category] = _lines(f"BFCL_v4_{category}.json")
            answers[category] = {} if "irrelevance" in category else _lines(
                f"possible_answer/BFCL_v4_{category}.json")
        entry = tasks[category][request["id"]]
        if "irrelevance" in category:
            result = eval_runner._evaluate_single_relevance_entry(
                handler, entry["id"], request["text"], entry, MODEL, category)
        else:
            result = eval_runner._evaluate_single_ast_entry(
                handler, entry["id"], request["text"], answers[category][entry["id"]]["ground_truth"], entry, MODEL,
                category, Language.PYTHON, ReturnFormat.PYTHON, False)
        print(json.dumps({"key": request["key"], "valid": bool(result["valid"]),
                          "error_type": result.get("error_type")}), flush=False)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
