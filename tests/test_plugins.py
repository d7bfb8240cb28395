"""Third-party tools, verifiers and task suites join through the ``amrsd.*`` entry points (amrsd_envs.plugins).

The slow test is the real thing: a tiny distribution with one tool, one verifier and one task family is built and
installed beside the built wheel in a fresh venv (tests/test_wheel.py's, without torch), and a subprocess checks that
the family loads, validates and that an oracle episode passes through the plugin's tool and verifier. A second,
broken distribution (unpacked into a folder put on PYTHONPATH only for one command) must fail with a message naming
its entry point and distribution. The fast tests pin the contracts in-process with fake entry points.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest

from amrsd_envs import plugins
from amrsd_envs.plugins import PluginError, load_plugins

PLUGIN_FILES = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=70.1"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "amrsd-demo-plugin"
        version = "0.1.0"
        dependencies = ["amrsd"]

        [project.entry-points."amrsd.tools"]
        demo = "amrsd_demo_plugin.tools"

        [project.entry-points."amrsd.verifiers"]
        demo = "amrsd_demo_plugin.verifiers:register"

        [project.entry-points."amrsd.tasks"]
        demo = "amrsd_demo_plugin.tasks"

        [tool.setuptools]
        packages = ["amrsd_demo_plugin", "amrsd_demo_plugin.tasks"]

        [tool.setuptools.package-data]
        "amrsd_demo_plugin.tasks" = ["*.yaml"]
    """,
    "amrsd_demo_plugin/__init__.py": "",
    "amrsd_demo_plugin/tools.py": '''
        from pydantic import BaseModel, ConfigDict, Field

        from amrsd_envs.tools import tool


        class ReverseArgs(BaseModel):
            model_config = ConfigDict(extra="forbid")
            text: str = Field(description="The text to reverse.")


        @tool(name="demo_reverse", description="Reverse a text.", args=ReverseArgs)
        def demo_reverse(args, ctx):
            return "reversed: " + args.text[::-1]
    ''',
    "amrsd_demo_plugin/verifiers.py": '''
        from amrsd_envs.verifiers import Verification, VerifierOptions, extract_answer, register_verifier


        class CaseFoldOptions(VerifierOptions):
            pass


        class CaseFoldVerifier:
            name = "demo_casefold"
            options_model = CaseFoldOptions

            def check(self, gold, response, options):
                got = extract_answer(response)
                if got is not None and got.strip().casefold() == gold.casefold():
                    return Verification.right(got)
                return Verification.wrong(got, "not the reversed word")


        def register():
            register_verifier(CaseFoldVerifier())
    ''',
    "amrsd_demo_plugin/tasks/__init__.py": "",
    # the oracle answers in capitals: only the plugin's case-folding verifier accepts that
    "amrsd_demo_plugin/tasks/reverse.yaml": """
        id: demo.reverse
        domain: tooluse
        description: Reverse a word with the demo_reverse tool.
        tools: [demo_reverse]
        max_turns: 3
        verifier: {type: demo_casefold}
        split: {test_fraction: 0.4, seed: 0}
        instances:
          - {id: w1, prompt: "Reverse 'gymnasium'.", answer: muisanmyg, params: {word: gymnasium, shout: MUISANMYG}}
          - {id: w2, prompt: "Reverse 'sympy'.", answer: ypmys, params: {word: sympy, shout: YPMYS}}
          - {id: w3, prompt: "Reverse 'verifier'.", answer: reifirev, params: {word: verifier, shout: REIFIREV}}
          - {id: w4, prompt: "Reverse 'plugin'.", answer: nigulp, params: {word: plugin, shout: NIGULP}}
          - {id: w5, prompt: "Reverse 'wheel'.", answer: leehw, params: {word: wheel, shout: LEEHW}}
        oracle:
          - tool_calls: [{name: demo_reverse, arguments: {text: "{word}"}}]
          - content: "\\\\boxed{{{shout}}}"
    """,
}

BROKEN_FILES = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=70.1"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "amrsd-broken-plugin"
        version = "0.2.0"

        [project.entry-points."amrsd.tools"]
        broken = "amrsd_broken_plugin.missing_module"

        [tool.setuptools]
        packages = ["amrsd_broken_plugin"]
    """,
    "amrsd_broken_plugin/__init__.py": "",
}

CHECK = """
import json
import gymnasium as gym
import amrsd_envs
from amrsd_envs.catalog import load_tasks
from amrsd_envs.evaluate import evaluate
from amrsd_envs.oracle import oracle_messages
from amrsd_envs.plugins import load_plugins

catalog = load_tasks()  # no path: the built-in suite plus the plugin suites
env = gym.make("AMRSD-ToolUse-v0", tasks=catalog, families=["demo.reverse"], split="train")
obs, reset_info = env.reset(seed=0)
script = oracle_messages(env.unwrapped.task, env.unwrapped.catalog)
word = env.unwrapped.task.template_values()["word"]
obs, _, terminated_1, _, _ = env.step(script[0])
tool_message = obs[-1]
obs, reward, terminated, truncated, info = env.step(script[1])
report = evaluate(
    "AMRSD-All-v0", "oracle", n_tasks=3, env_kwargs={"tasks": catalog, "families": ["demo.reverse"]}, progress=False
)
p = load_plugins()
print(json.dumps({
    "families": sorted(f.id for f in catalog), "source": str(catalog["demo.reverse"].source),
    "tool_schemas": [t["function"]["name"] for t in reset_info["tools"]],
    "word": word, "tool_message": tool_message, "terminated_1": terminated_1,
    "reward": reward, "terminated": terminated,
    "verification": info["verification"].model_dump(), "pass_at_1": report.pass_at_1,
    "plugins": [list(p.tools), list(p.verifiers), [str(d) for d in p.task_dirs]],
}))
"""


def _write_project(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def _build(project: Path, out: Path) -> Path:
    from test_wheel import _run

    _run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
          "--no-build-isolation", "-w", str(out), str(project)])
    (wheel,) = out.glob(project.name.replace("-", "_") + "-*.whl")
    return wheel


@pytest.mark.slow
def test_installed_plugin_adds_a_tool_a_verifier_and_a_task_family(tmp_path):
    from test_wheel import _run, built_wheel, clean_env, light_venv

    plugin = _build(_write_project(tmp_path / "amrsd_demo_plugin", PLUGIN_FILES), tmp_path / "dist")
    bin_dir = light_venv(tmp_path / "venv", built_wheel(), plugin)
    env = clean_env(bin_dir)
    cwd = tmp_path / "work"  # outside the repository and the plugin's source folder
    cwd.mkdir()

    out = json.loads(_run([str(bin_dir / "python"), "-c", CHECK], env=env, cwd=cwd).stdout.strip().splitlines()[-1])
    assert "demo.reverse" in out["families"] and "math.fraction_sum" in out["families"]
    assert "site-packages/amrsd_demo_plugin/tasks/reverse.yaml" in out["source"]
    assert out["tool_schemas"] == ["demo_reverse"]
    tool_message, word = out["tool_message"], out["word"]
    assert tool_message["role"] == "tool" and f"reversed: {word[::-1]}" in tool_message["content"], tool_message
    assert not out["terminated_1"]
    assert (out["reward"], out["terminated"], out["verification"]["correct"]) == (1.0, True, True)
    assert out["verification"]["extracted"] == word[::-1].upper()  # accepted by demo_casefold, not by exact equality
    assert out["pass_at_1"] == 1.0
    assert out["plugins"][:2] == [["demo"], ["demo"]] and out["plugins"][2][0].endswith("amrsd_demo_plugin/tasks")

    listing = _run(["amrsd-tasks", "list", "--domain", "tooluse"], env=env, cwd=cwd)
    assert "demo.reverse" in listing.stdout
    valid = _run(["amrsd-tasks", "validate", out["plugins"][2][0]], env=env, cwd=cwd)  # explicit path: the plugin's
    assert "1 valid family, 0 problem(s)" in valid.stdout  # tool and verifier are still known

    broken_dir = tmp_path / "broken_site"
    broken = _build(_write_project(tmp_path / "amrsd_broken_plugin", BROKEN_FILES), tmp_path / "dist")
    with zipfile.ZipFile(broken) as z:
        z.extractall(broken_dir)  # a real .dist-info with entry_points.txt, visible only with PYTHONPATH
    failed = subprocess.run([str(bin_dir / "python"), "-c", "from amrsd_envs.catalog import load_tasks; load_tasks()"],
                            capture_output=True, text=True, cwd=cwd, env={**env, "PYTHONPATH": str(broken_dir)})
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("amrsd_envs.plugins.PluginError: plugin entry point 'broken'"), failed.stderr[-2000:]
    for part in ("amrsd_broken_plugin.missing_module", "'amrsd.tools'", "amrsd-broken-plugin 0.2.0",
                 "ModuleNotFoundError"):
        assert part in last, last


# -- the contracts, in-process with fake entry points (nothing is registered) -------------------------------------


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace the installed entry points by ``{group: [EntryPoint, ...]}`` and forget any earlier result."""
    groups: dict[str, list[importlib.metadata.EntryPoint]] = {}
    monkeypatch.setattr(plugins, "_result", None)
    monkeypatch.setattr(plugins, "_entry_points", lambda group: groups.get(group, []))
    return groups


def _ep(name: str, value: str, group: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=group)


def _fake_module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_callables_are_called_once_and_modules_imported(fake_entry_points, monkeypatch):
    calls = []
    _fake_module(monkeypatch, "fake_plugin", setup=lambda: calls.append("setup"))
    fake_entry_points["amrsd.tools"] = [_ep("mod", "fake_plugin", "amrsd.tools")]
    fake_entry_points["amrsd.verifiers"] = [_ep("fn", "fake_plugin:setup", "amrsd.verifiers")]
    first = load_plugins()
    assert load_plugins() is first and calls == ["setup"]
    assert (first.tools, first.verifiers, first.task_dirs) == (("mod",), ("fn",), ())


def test_a_plugin_that_is_neither_module_nor_callable_is_named(fake_entry_points, monkeypatch):
    _fake_module(monkeypatch, "fake_plugin", NAME="x")
    fake_entry_points["amrsd.tools"] = [_ep("odd", "fake_plugin:NAME", "amrsd.tools")]
    with pytest.raises(PluginError, match=r"'odd' = 'fake_plugin:NAME' in group 'amrsd.tools'.*a module or a callable"):
        load_plugins()
    with pytest.raises(PluginError, match="'odd'"):  # the error is kept: the plugin is not half-loaded twice
        load_plugins()


def test_a_failing_registration_names_the_entry_point(fake_entry_points, monkeypatch):
    def boom():
        raise ValueError("verifier 'exact' is already registered")

    _fake_module(monkeypatch, "fake_plugin", boom=boom)
    fake_entry_points["amrsd.verifiers"] = [_ep("dup", "fake_plugin:boom", "amrsd.verifiers")]
    with pytest.raises(PluginError, match=r"'dup'.*failed when called: ValueError: verifier 'exact' is already"):
        load_plugins()


def test_a_task_suite_is_a_package_folder_with_yaml(fake_entry_points, monkeypatch, tmp_path):
    (tmp_path / "suite" / "sub").mkdir(parents=True)
    (tmp_path / "suite" / "sub" / "b.yml").write_text("id: x\n")
    (tmp_path / "suite" / "a.yaml").write_text("id: y\n")
    suite = _fake_module(monkeypatch, "fake_suite")
    suite.__spec__ = importlib.machinery.ModuleSpec("fake_suite", None, is_package=True)
    suite.__spec__.submodule_search_locations = [str(tmp_path / "suite")]
    fake_entry_points["amrsd.tasks"] = [_ep("suite", "fake_suite", "amrsd.tasks")]
    loaded = load_plugins()
    assert loaded.task_dirs == (tmp_path / "suite",)
    assert loaded.task_files() == [tmp_path / "suite" / "a.yaml", tmp_path / "suite" / "sub" / "b.yml"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("fake_plugin:suite", "names a package"), ("fake_plugin", "not a package installed as one folder")],
)
def test_a_task_suite_that_is_not_a_package_is_refused(fake_entry_points, monkeypatch, value, message):
    _fake_module(monkeypatch, "fake_plugin", suite="tasks/")
    fake_entry_points["amrsd.tasks"] = [_ep("bad", value, "amrsd.tasks")]
    with pytest.raises(PluginError, match=message):
        load_plugins()
