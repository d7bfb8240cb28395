"""Every code example in the documentation runs: README.md, docs/*.md, tasks/README.md and AMRSDEnv's docstring.

Each fenced block is one test, named ``file:line`` (the line of its opening fence; for a bash block, of each command).

Conventions, so that a page reads naturally and still runs:

- ```` ```python ```` blocks of one file run in order, in one namespace, in one subprocess, whose working directory is
  a fresh workspace (``configs/`` and ``tasks/`` of the checkout are linked into it) with the checkout on
  ``sys.path`` and ``$AMRSD_CACHE`` pointing at a per-session folder. Later blocks may use what earlier ones defined.
  A block that fails fails its test, and the file's later blocks fail as not reached.
- A first line ``# not run: <reason>`` skips a block with that reason; ``# needs: trl`` / ``gpu`` / ``docker`` /
  ``server`` runs it only where that is available (a server never is here), and skips it with the reason elsewhere.
- A block that trains (it calls ``amrsd_train.run(``) is marked ``slow`` and runs in a subprocess of its own, after
  the file's earlier blocks; the file's later blocks do not see what it defined. So does a ``# needs:`` block.
- A block whose first line is ``# file: PATH`` (or whose info string has ``file=PATH``) is saved as ``PATH`` in the
  workspace before anything of its file runs.
- A ```` ```yaml ```` block that is a complete task spec (a mapping with ``id`` and ``domain``) is loaded with the
  catalog loader (schema, templates, sampled instances) and its oracle is played through ``AMRSD-All-v0`` on up to
  five instances, each of which must be rewarded 1. A spec that names a tool or verifier kind which only a Python
  block of its page defines is loaded by that block instead; the test checks that a passing block of the page loads
  its folder. YAML fragments are reported as skipped.
- ```` ```bash ```` blocks: each ``amrsd-tasks`` / ``amrsd-eval`` command (with or without a ``.venv/bin/`` prefix)
  runs, through the same entry functions as the console scripts, in the page's workspace, and must exit 0; these are
  ``slow`` (each loads a catalog). Commands that need a server (``--policy openai``), train (``amrsd-train``) or
  run the project's scripts are skipped with the reason.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")), "tasks/README.md"]
DOCSTRINGS = {"amrsd_envs/env.py": "AMRSDEnv"}  # file -> class whose docstring holds fenced examples
LINKED_INTO_WORKSPACE = ("configs", "tasks")
ORACLE_INSTANCES = 5
FAST_TIMEOUT_S = 900
SLOW_TIMEOUT_S = 1800
CLI_FUNCTIONS = {"amrsd-tasks": "tasks_main", "amrsd-eval": "eval_main"}
NOT_RUN_PROGRAMS = {
    "amrsd-train": "trains for minutes; its command line is tested in tests/test_trainer.py",
    "bash": "a project script (setup, main job or the whole test suite), not run from inside the test suite",
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>```+)(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^#\s*(?P<key>not run|needs|file)\s*:\s*(?P<value>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the checkout
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    file: str | None = None  # `# file: PATH` / `file=PATH`: saved in the workspace
    not_run: str | None = None
    needs: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def trains(self) -> bool:
        return self.lang == "python" and "amrsd_train.run(" in self.code

    @property
    def isolated(self) -> bool:
        """Runs in a subprocess of its own (after the page's earlier blocks) instead of the page's shared one."""
        return self.trains or self.needs is not None


def _fenced_blocks(page: str, text: str, first_line: int = 1) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, info = m["indent"], m["ticks"], m["info"].strip()
        start, body = i, []
        i += 1
        while i < len(lines) and not re.match(rf"^[ \t]*{ticks}\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        words = info.split()
        lang = words[0].lower() if words else ""
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        code = "\n".join(body) + "\n"
        directive = _DIRECTIVE.match(body[0].strip()) if body else None
        found = {directive["key"]: directive["value"]} if directive else {}
        blocks.append(Block(page, first_line + start, lang, code, file=attrs.get("file") or found.get("file"),
                            not_run=found.get("not run"), needs=found.get("needs")))
    return blocks


def _docstring_blocks(page: str, class_name: str) -> list[Block]:
    source = (ROOT / page).read_text(encoding="utf-8")
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == class_name)
    doc = ast.get_docstring(node, clean=True) or ""
    body = node.body[0]
    # line numbers inside the docstring: the docstring's first line plus the offset of the block in it
    return [Block(page, body.lineno + b.line - 1, b.lang, b.code, b.file, b.not_run, b.needs)
            for b in _fenced_blocks(page, doc)]


def collect() -> dict[str, list[Block]]:
    pages = {page: _fenced_blocks(page, (ROOT / page).read_text(encoding="utf-8")) for page in PAGES}
    pages.update({page: _docstring_blocks(page, cls) for page, cls in DOCSTRINGS.items()})
    wanted = ("python", "yaml", "bash")
    return {page: [b for b in blocks if b.lang in wanted or b.file] for page, blocks in pages.items()}


BLOCKS = collect()


# ----------------------------------------------------------------------------------------------------------------
# what each block is


def _spec_of(block: Block) -> dict | None:
    """The task spec a YAML block holds, or None for a fragment."""
    try:
        data = yaml.safe_load(block.code)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) and "id" in data and "domain" in data else None


@dataclass(frozen=True)
class Command:
    block: Block
    line: int
    argv: list[str]

    @property
    def id(self) -> str:
        return f"{self.block.page}:{self.line}"

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name

    def skip_reason(self) -> str | None:
        if self.program in CLI_FUNCTIONS:
            if "openai" in self.argv and "--policy" in self.argv:
                return "needs an OpenAI-compatible server at --base-url"
            return None
        return NOT_RUN_PROGRAMS.get(self.program, f"`{self.program}` is not one of the commands the docs test runs")


def _commands(block: Block) -> list[Command]:
    out, pending, first = [], "", None
    for offset, raw in enumerate(block.code.splitlines(), start=1):
        if first is None:
            first = block.line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        argv = shlex.split(line, comments=True) if line else []
        if argv:
            out.append(Command(block, first, argv))
        first = None
    return out


def _params():
    params = []
    for page, blocks in BLOCKS.items():
        for block in blocks:
            if block.lang == "bash":
                for cmd in _commands(block):
                    reason = cmd.skip_reason() or block.not_run
                    marks = [pytest.mark.skip(reason=reason)] if reason else [pytest.mark.slow]
                    params.append(pytest.param("bash", cmd, id=cmd.id, marks=marks))
                continue
            if block.not_run:
                skip = pytest.mark.skip(reason=block.not_run)
                params.append(pytest.param(block.lang, block, id=block.id, marks=skip))
            elif block.lang == "python":
                params.append(pytest.param("python", block, id=block.id,
                                           marks=[pytest.mark.slow] if block.trains else []))
            elif block.lang == "yaml":
                if _spec_of(block) is None:
                    params.append(pytest.param("yaml", block, id=block.id,
                                               marks=pytest.mark.skip(reason="a YAML fragment, not a whole task spec")))
                else:
                    params.append(pytest.param("yaml", block, id=block.id))
    return params


# ----------------------------------------------------------------------------------------------------------------
# workspaces and runs


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    """page -> its workspace folder (made on first use), and the per-session model cache."""
    made: dict[str, Path] = {}
    cache = tmp_path_factory.mktemp("amrsd-cache")

    def get(page: str) -> Path:
        if page not in made:
            ws = tmp_path_factory.mktemp("docs-" + re.sub(r"[^A-Za-z0-9]+", "-", page))
            for name in LINKED_INTO_WORKSPACE:
                (ws / name).symlink_to(ROOT / name, target_is_directory=True)
            for block in BLOCKS[page]:
                if block.file:
                    target = ws / block.file
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(block.code, encoding="utf-8")
            made[page] = ws
        return made[page]

    get.cache = cache  # type: ignore[attr-defined]
    return get


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["AMRSD_CACHE"] = str(cache)
    env.pop("AMRSD_TASKS", None)
    return env


_DRIVER = r'''
import json, sys, traceback, types
blocks = json.load(open(sys.argv[1]))
main = types.ModuleType("__main__")
sys.modules["__main__"] = main          # classes defined by the blocks live in a real module (pydantic, pickling)
with open(sys.argv[2], "w") as out:
    for block in blocks:
        print(f"----- {block['id']}", flush=True)
        code = "\n" * (block["line"]) + block["code"]      # tracebacks name the page's own line numbers
        try:
            exec(compile(code, block["page"], "exec"), main.__dict__)
        except BaseException:
            out.write(json.dumps({"id": block["id"], "ok": False, "error": traceback.format_exc()}) + "\n")
            break
        out.write(json.dumps({"id": block["id"], "ok": True}) + "\n")
        out.flush()
'''


def _run_python(blocks: list[Block], ws: Path, cache: Path, timeout: int, tag: str) -> tuple[dict[str, dict], str]:
    """Run ``blocks`` in order in one namespace: block id -> {ok, error}, and the combined output."""
    (ws / f".docs-{tag}.json").write_text(json.dumps(
        [{"id": b.id, "page": b.page, "line": b.line, "code": b.code} for b in blocks]))
    driver = ws / ".docs-driver.py"
    driver.write_text(_DRIVER)
    results = ws / f".docs-{tag}-results.jsonl"
    try:
        proc = subprocess.run([sys.executable, str(driver), str(ws / f".docs-{tag}.json"), str(results)], cwd=ws,
                              env=_env(cache), capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        output = f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    return {r["id"]: r for r in rows}, output


_SHARED_RUNS: dict[str, tuple[dict[str, dict], str]] = {}


def _shared_blocks(page: str) -> list[Block]:
    return [b for b in BLOCKS[page] if b.lang == "python" and not b.not_run and not b.isolated]


def _shared_run(page: str, workspaces) -> tuple[dict[str, dict], str]:
    """The page's shared Python run (every block that is not skipped, slow or isolated), done once per session."""
    if page not in _SHARED_RUNS:
        _SHARED_RUNS[page] = _run_python(_shared_blocks(page), workspaces(page), workspaces.cache, FAST_TIMEOUT_S,
                                         "shared")
    return _SHARED_RUNS[page]


def _needs_reason(need: str) -> str | None:
    """Why ``# needs: need`` is not available here, or None when it is."""
    import importlib.util

    need = need.strip().lower()
    if need == "trl":
        return None if importlib.util.find_spec("trl") else "needs trl (not installed in this environment)"
    if need == "gpu":
        import torch

        return None if torch.cuda.is_available() else "needs a CUDA GPU"
    if need == "docker":
        from amrsd_envs.sandbox.testing import docker_unavailable_reason

        reason = docker_unavailable_reason()
        return f"needs docker: {reason}" if reason else None
    if need == "server":
        return "needs a running server (an OpenAI-compatible endpoint or the like), which tests do not start"
    return f"needs {need}, which this test does not know how to provide"


def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def _check_python(block: Block, workspaces) -> None:
    page = block.page
    if block.isolated:
        if block.needs:
            reason = _needs_reason(block.needs)
            if reason:
                pytest.skip(reason)
        earlier = [b for b in _shared_blocks(page) if b.line < block.line]
        tag = f"isolated-{block.line}"
        results, output = _run_python([*earlier, block], workspaces(page), workspaces.cache, SLOW_TIMEOUT_S, tag)
        failed = next((r for r in results.values() if not r["ok"]), None)
        if failed is not None:
            pytest.fail(f"{failed['id']} failed:\n{failed['error']}\noutput:\n{_tail(output)}", pytrace=False)
        assert block.id in results, f"{block.id} was not reached:\n{_tail(output)}"
        return
    results, output = _shared_run(page, workspaces)
    if block.id in results:
        if not results[block.id]["ok"]:
            pytest.fail(f"{block.id} failed:\n{results[block.id]['error']}\noutput:\n{_tail(output)}", pytrace=False)
        return
    failed = next((r["id"] for r in results.values() if not r["ok"]), None)
    pytest.fail(f"{block.id} was not reached: " + (f"{failed} failed before it" if failed else
                                                   f"the run stopped:\n{_tail(output)}"), pytrace=False)


def _check_yaml(block: Block, workspaces) -> None:
    import gymnasium as gym

    import amrsd_envs  # noqa: F401  (registers the env ids)
    from amrsd_envs.catalog import load_tasks
    from amrsd_envs.oracle import OraclePolicy
    from amrsd_envs.tools import TOOLS
    from amrsd_envs.verifiers import VERIFIERS

    spec = _spec_of(block)
    assert spec is not None
    ws = workspaces(block.page)
    defined_by_page = [t for t in spec.get("tools", []) if t not in TOOLS]
    kind = (spec.get("verifier") or {}).get("type")
    if kind not in VERIFIERS:
        defined_by_page.append(kind)
    if defined_by_page:
        # The spec names something a Python block of the page registers: that block must load this file's folder.
        assert block.file, f"{block.id} names {defined_by_page}, which are not built in, and has no `# file:` line"
        folder = Path(block.file).parent.as_posix()
        loaders = [b for b in _shared_blocks(block.page) if b.line > block.line and
                   (f'"{folder}"' in b.code or f'"{block.file}"' in b.code)]
        assert loaders, f"{block.id} names {defined_by_page}; no later Python block of the page loads {folder!r}"
        results, output = _shared_run(block.page, workspaces)
        loader = loaders[0]
        assert results.get(loader.id, {}).get("ok"), f"{loader.id}, which loads {folder!r}, did not pass:\n" + (
            results.get(loader.id, {}).get("error") or _tail(output))
        return
    path = ws / (block.file or f".docs-spec-{block.line}/{spec['id']}.yaml")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.code, encoding="utf-8")
    catalog = load_tasks(path)
    assert [f.id for f in catalog] == [spec["id"]]
    family = catalog[spec["id"]]
    env = gym.make("AMRSD-All-v0", tasks=catalog)
    try:
        policy = OraclePolicy(env)
        for i in range(min(ORACLE_INSTANCES, len(family))):
            task_id = family.instance(i).id
            messages, info = env.reset(options={"task_id": task_id})
            terminated = truncated = False
            while not (terminated or truncated):
                messages, reward, terminated, truncated, info = env.step(policy(messages, info.get("tools")))
            verdict = info.get("verification")
            assert reward == 1.0, f"the oracle of {task_id} got {reward}: {verdict}\n{messages[-1]['content'][:500]}"
    finally:
        env.close()


def _check_bash(cmd: Command, workspaces) -> None:
    fn = CLI_FUNCTIONS[cmd.program]
    entry = f"import sys; from amrsd_envs.cli import {fn}; sys.exit({fn}(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", entry, *cmd.argv[1:]], cwd=workspaces(cmd.block.page),
                          env=_env(workspaces.cache), capture_output=True, text=True, timeout=FAST_TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(cmd.argv)} exited {proc.returncode}:\n{_tail(proc.stdout + proc.stderr)}"


@pytest.mark.parametrize(("kind", "item"), _params())
def test_docs_example_runs(kind, item, workspaces):
    {"python": _check_python, "yaml": _check_yaml, "bash": _check_bash}[kind](item, workspaces)


# ----------------------------------------------------------------------------------------------------------------
# the collection itself


def test_every_page_with_code_has_runnable_examples():
    """The pages this test reads exist, and the conventions above found the blocks they should."""
    counts = {page: {lang: sum(b.lang == lang for b in blocks) for lang in ("python", "yaml", "bash")}
              for page, blocks in BLOCKS.items()}
    assert counts["README.md"]["python"] >= 2 and counts["README.md"]["bash"] >= 3, counts["README.md"]
    assert counts["docs/EXTENDING.md"]["python"] >= 6, counts["docs/EXTENDING.md"]
    assert counts["tasks/README.md"]["yaml"] >= 4, counts["tasks/README.md"]
    assert counts["amrsd_envs/env.py"]["python"] == 2, counts["amrsd_envs/env.py"]


def test_readme_links_stay_inside_the_repository():
    """Relative links of the pages point at files of this checkout (nothing outside it, such as ../shared)."""
    problems = []
    for page in [*PAGES, "sandboxes/README.md", "bench/README.md"]:
        path = ROOT / page
        if not path.exists():
            continue
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                continue
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if not resolved.is_relative_to(ROOT):
                problems.append(f"{page}: {target} leaves the repository")
            elif not resolved.exists():
                problems.append(f"{page}: {target} does not exist")
    assert not problems, "\n".join(problems)
