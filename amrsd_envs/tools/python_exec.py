"""The ``python`` tool: run the model's code in the episode's sandbox, never in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from amrsd_envs.tools.base import ToolError, tool
from amrsd_envs.tools.context import ToolContext

if TYPE_CHECKING:
    from amrsd_envs.sandbox import ExecResult

__all__ = ["PythonArgs", "format_exec_result"]


class PythonArgs(BaseModel):
    """Arguments of the python tool."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        description=(
            "A complete Python 3 program. Print what you want to see: only stdout/stderr come back. "
            "Each call starts fresh (no variables or files persist); no network access."
        ),
        min_length=1,
        max_length=100_000,
    )


def format_exec_result(result: ExecResult, timeout_s: float) -> str:
    """What the model sees of an ``ExecResult``: stdout, then stderr/exit code/timeout notices if any."""
    parts = [result.stdout.rstrip("\n")] if result.stdout.strip() else []
    if result.stderr.strip():
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.timed_out:
        parts.append(f"[timed out after {timeout_s:g} s: the program was killed]")
    elif result.exit_code != 0:
        parts.append(f"[exit code {result.exit_code}]")
    if result.truncated:
        parts.append("[output cut by the sandbox's size limit]")
    return "\n".join(parts) if parts else "(no output; use print() to see values)"


@tool(
    name="python",
    description=(
        "Run a Python 3 program in an isolated sandbox (no network, time and memory limits) and see "
        "its printed output. Standard library, plus whatever packages the sandbox provides."
    ),
    args=PythonArgs,
)
def python(args: PythonArgs, ctx: ToolContext) -> str:
    """Run ``args.code`` with the context's timeout and memory limit, enforced by the sandbox."""
    from amrsd_envs.sandbox import SandboxError

    try:
        sandbox = ctx.get_sandbox()
        result = sandbox.run(args.code, timeout_s=ctx.python_timeout_s, memory_mb=ctx.python_memory_mb)
    except SandboxError as exc:
        raise ToolError(f"the python sandbox is unavailable: {exc}") from None
    return format_exec_result(result, ctx.python_timeout_s)
