"""Scripted oracle trajectories: what a perfect agent sends, derived from the task spec.

A family without an ``oracle:`` block answers in one turn with its worked reference followed by the gold answer in
``\\boxed{}``. A family with one (tool-use families) sends its steps in order: each step's tool calls (string
argument values are templates over the instance parameters and ``{answer}``) and text. A function-calling family
(BFCL) answers with what its verifier kind says a perfect response is (``oracle_response(gold)``: for ``bfcl_ast``,
each expected call with the first allowed value of every argument), or, for a multi-turn kind
(``bfcl_multi_turn``), with its ``oracle_messages(gold)``: the ground-truth calls and a reply, turn after turn.
"""

from __future__ import annotations

from typing import Any

from amrsd_envs.catalog import TaskCatalog, TaskInstance


def oracle_messages(task: TaskInstance, catalog: TaskCatalog) -> list[str]:
    """The assistant messages of the oracle trajectory, in order (the last one is the final answer)."""
    spec = catalog[task.family_id].spec
    if spec.function_calling is not None:
        from amrsd_envs.verifiers import VERIFIERS

        verifier = VERIFIERS[task.verifier]
        if hasattr(verifier, "oracle_messages"):  # a multi-turn kind scripts one message per step of every turn
            return verifier.oracle_messages(task.answer)
        if not hasattr(verifier, "oracle_response"):
            raise ValueError(f"family {spec.id}: verifier {task.verifier!r} cannot write an oracle response for a "
                             "function-calling family (it has no oracle_response(gold))")
        return [verifier.oracle_response(task.answer)]
    values = task.template_values()
    if spec.oracle:
        from amrsd_envs.toolcalls import ToolCall, render_tool_calls

        out = []
        for step in spec.oracle:
            calls = [
                ToolCall(name=c["name"], arguments=_render_value(c.get("arguments", {}), values))
                for c in step.tool_calls
            ]
            text = step.content.format(**values)
            if calls:
                text = (text + "\n" if text else "") + render_tool_calls(calls)
            out.append(text)
        return out
    body = (task.reference.strip() + "\n\n") if task.reference else ""
    return [f"{body}Final answer: \\boxed{{{task.answer}}}"]


def _render_value(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**values)
    if isinstance(value, dict):
        return {k: _render_value(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, values) for v in value]
    return value


class OraclePolicy:
    """A policy that replays the oracle trajectory of the env's current task, turn by turn."""

    def __init__(self, env: Any):
        self.env = env.unwrapped

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        task = self.env.task
        if task is None:
            raise RuntimeError("OraclePolicy needs an env that has been reset")
        script = oracle_messages(task, self.env.catalog)
        turn = sum(1 for m in messages if m["role"] == "assistant")
        return script[min(turn, len(script) - 1)]
