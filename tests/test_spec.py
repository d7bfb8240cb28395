"""Task-spec loading: good files load; every kind of broken file fails at load naming the file and field."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from amrsd_envs import load_task_file, load_tasks
from amrsd_envs.errors import TaskSpecError
from amrsd_envs.spec import task_spec_json_schema

GOOD = """\
id: test.add
domain: math
difficulty: {levels: 2}
generator:
  seed: 3
  count: 500
  params:
    a: {type: int, range: {1: [1, 9], 2: [100, 999]}}
    b: {type: int, range: [1, 9]}
  derived:
    s: "a + b"
prompt: "What is {a} + {b}?"
answer: {expr: "s"}
reference: "{a} + {b} = {s}"
verifier: {type: math}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(path: Path) -> TaskSpecError:
    with pytest.raises(TaskSpecError) as info:
        load_task_file(path)
    return info.value


def test_good_generator_file_loads_and_is_deterministic(tmp_path):
    path = write(tmp_path, "good.yaml", GOOD)
    fam = load_task_file(path)
    assert len(fam) == 500
    inst = fam.instance(7)
    assert inst.id == "test.add/00007"
    a, b = inst.params["a"], inst.params["b"]
    assert inst.prompt == f"What is {a} + {b}?"
    assert inst.answer == str(a + b)
    assert inst.reference == f"{a} + {b} = {a + b}"
    again = load_task_file(path).instance(7)
    assert again == inst
    hard = load_task_file(path, difficulty=2).instance(7)
    assert 100 <= hard.params["a"] <= 999


def test_split_is_stable_and_near_fraction(tmp_path):
    fam = load_task_file(write(tmp_path, "good.yaml", GOOD))
    splits = [fam.split_of(i) for i in range(500)]
    assert splits == [load_task_file(tmp_path / "good.yaml").split_of(i) for i in range(500)]
    frac = splits.count("test") / len(splits)
    assert 0.1 < frac < 0.3
    # identical draws share a side: key is the parameters, not the index
    by_params: dict[str, set[str]] = {}
    for i in range(500):
        inst = fam.instance(i)
        by_params.setdefault(json.dumps(inst.params, sort_keys=True), set()).add(inst.split)
    assert all(len(s) == 1 for s in by_params.values())


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "id: x\ndomain: math\nprompt: [unclosed\n")
    err = errors_of(path)
    (issue,) = err.issues
    assert issue.file == str(path) and issue.loc == "<yaml>"
    assert "line" in issue.msg and "YAML syntax error" in issue.msg
    assert str(path) in str(err)


def test_unknown_verifier_lists_valid_kinds(tmp_path):
    path = write(tmp_path, "v.yaml", GOOD.replace("{type: math}", "{type: mathz}"))
    err = errors_of(path)
    assert any(i.loc == "verifier" and "mathz" in i.msg and "numeric" in i.msg for i in err.issues), err


def test_bad_verifier_option_names_option(tmp_path):
    path = write(tmp_path, "v.yaml", GOOD.replace("{type: math}", "{type: numeric, rtoll: 0.1}"))
    err = errors_of(path)
    assert any(i.loc == "verifier" and "rtoll" in i.msg for i in err.issues), err


def test_missing_field(tmp_path):
    text = GOOD.replace("domain: math\n", "")
    err = errors_of(write(tmp_path, "m.yaml", text))
    assert any(i.loc == "domain" and "required" in i.msg for i in err.issues), err


def test_unknown_field_is_rejected(tmp_path):
    err = errors_of(write(tmp_path, "u.yaml", GOOD + "promt: typo\n"))
    assert any(i.loc == "promt" and "unknown field" in i.msg for i in err.issues), err


def test_wrong_type_names_nested_path(tmp_path):
    text = GOOD.replace("b: {type: int, range: [1, 9]}", "b: {type: int, range: [9, 1]}")
    err = errors_of(write(tmp_path, "t.yaml", text))
    assert any(i.loc.startswith("generator.params.b") and "lower bound" in i.msg for i in err.issues), err


def test_template_naming_undefined_parameter(tmp_path):
    text = GOOD.replace('prompt: "What is {a} + {b}?"', 'prompt: "What is {a} + {c}?"')
    err = errors_of(write(tmp_path, "p.yaml", text))
    (issue,) = err.issues
    assert issue.loc == "prompt" and "['c']" in issue.msg and "undefined" in issue.msg


def test_expression_with_undefined_name(tmp_path):
    text = GOOD.replace('s: "a + b"', 's: "a + q"')
    err = errors_of(write(tmp_path, "e.yaml", text))
    assert any(i.loc == "generator.derived.s" and "q" in i.msg for i in err.issues), err


def test_answer_expression_that_fails_at_evaluation(tmp_path):
    text = GOOD.replace('answer: {expr: "s"}', 'answer: {expr: "molar_mass(\'Xx2\')"}')
    err = errors_of(write(tmp_path, "f.yaml", text))
    (issue,) = err.issues
    assert issue.loc == "answer.expr" and "unknown element 'Xx'" in issue.msg


def test_answer_expression_that_fails_only_for_sampled_values(tmp_path):
    # parses fine symbolically; fails once a = 0 is drawn (factorial of a negative)
    text = GOOD.replace('answer: {expr: "s"}', 'answer: {expr: "factorial(-a).evalf() + molar_mass(\'H\' * a)"}')
    err = errors_of(write(tmp_path, "f2.yaml", text))
    (issue,) = err.issues
    assert issue.loc == "answer.expr", issue


def test_unsatisfiable_constraint(tmp_path):
    text = GOOD.replace('    s: "a + b"\n', '    s: "a + b"\n  constraints: ["a > 100"]\n  max_attempts: 20\n')
    err = errors_of(write(tmp_path, "c.yaml", text))
    (issue,) = err.issues
    assert issue.loc == "generator.constraints" and "max_attempts=20" in issue.msg


def test_two_kinds_at_once(tmp_path):
    text = GOOD + "instances:\n  - {id: q1, prompt: p, answer: '1'}\n"
    err = errors_of(write(tmp_path, "k.yaml", text))
    assert any("exactly one of" in i.msg for i in err.issues), err


def test_unknown_tool(tmp_path):
    err = errors_of(write(tmp_path, "tool.yaml", GOOD + "tools: [pythn]\n"))
    assert any(i.loc == "tools" and "pythn" in i.msg and "python" in i.msg for i in err.issues), err


def test_errors_of_several_files_are_all_reported(tmp_path):
    write(tmp_path, "a.yaml", GOOD.replace("domain: math", "domain: biology"))
    write(tmp_path, "b.yaml", "id: [\n")
    write(tmp_path, "ok.yaml", GOOD.replace("test.add", "test.ok"))
    with pytest.raises(TaskSpecError) as info:
        load_tasks(tmp_path)
    files = {Path(i.file).name for i in info.value.issues}
    assert files == {"a.yaml", "b.yaml"}
    assert "a.yaml" in str(info.value) and "b.yaml" in str(info.value)


def test_duplicate_family_ids_across_files(tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD)
    with pytest.raises(TaskSpecError, match="also defined"):
        load_tasks(tmp_path)


def test_fixed_instances_and_choice_options(tmp_path):
    path = write(
        tmp_path,
        "fixed.yaml",
        """\
        id: test.choice
        domain: science
        verifier: {type: choice}
        instances:
          - id: q1
            prompt: "Which particle is negative? A) proton B) electron"
            options: [proton, electron]
            answer: B
            reference: "Electrons carry charge -e."
        """,
    )
    fam = load_task_file(path)
    inst = fam.instance(0)
    assert inst.id == "test.choice/q1" and inst.verifier_options["options"] == ["proton", "electron"]
    assert fam.instance_by_id("test.choice/q1") == inst


def test_choice_without_options_fails(tmp_path):
    path = write(
        tmp_path,
        "fixed.yaml",
        """\
        id: test.choice
        domain: science
        verifier: {type: choice}
        instances:
          - {id: q1, prompt: "?", answer: B}
        """,
    )
    err = errors_of(path)
    assert any(i.loc == "instances.0.options" for i in err.issues), err


def test_dataset_jsonl_with_answer_regex(tmp_path):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} plus {i}\n#### {2 * i}", "qid": f"r{i}"} for i in range(5)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    path = write(
        tmp_path,
        "ds.yaml",
        """\
        id: test.gsm
        domain: math
        verifier: {type: math}
        prompt: "{question} Put the answer in \\\\boxed{{}}."
        dataset:
          path: data.jsonl
          fields: {question: question, answer: answer, id: qid}
          answer_regex: "#### (.+)$"
        """,
    )
    fam = load_task_file(path)
    assert len(fam) == 5
    inst = fam.instance(3)
    assert inst.answer == "6" and inst.id == "test.gsm/r3" and inst.prompt.startswith("What is 3 + 3?")
    assert "\\boxed{}" in inst.prompt


def test_dataset_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": ["1+1?", "2+2?"], "solution": ["2", "4"]}), tmp_path / "d.parquet")
    path = write(
        tmp_path,
        "pq.yaml",
        """\
        id: test.pq
        domain: math
        verifier: {type: math}
        prompt: "{problem}"
        dataset: {path: d.parquet, fields: {problem: problem, answer: solution}}
        """,
    )
    fam = load_task_file(path)
    assert [fam.instance(i).answer for i in range(2)] == ["2", "4"]


def test_dataset_missing_file_and_column(tmp_path):
    path = write(
        tmp_path,
        "ds.yaml",
        """\
        id: test.gsm
        domain: math
        verifier: {type: math}
        prompt: "{question}"
        dataset: {path: nope.jsonl, fields: {question: question, answer: answer}}
        """,
    )
    err = errors_of(path)
    assert any(i.loc == "dataset.path" and "not found" in i.msg for i in err.issues)
    (tmp_path / "nope.jsonl").write_text(json.dumps({"q": "x", "answer": "1"}) + "\n")
    err = errors_of(path)
    assert any(i.loc == "dataset.fields.question" and "'question'" in i.msg for i in err.issues), err


def test_json_schema_export():
    schema = task_spec_json_schema()
    assert schema["title"] == "AMR-SD task family"
    assert {"id", "domain", "verifier"} <= set(schema["required"])
    assert "generator" in schema["properties"]


def test_cli_validate_and_schema(tmp_path, capsys):
    from amrsd_envs.cli import tasks_main

    write(tmp_path, "bad.yaml", GOOD.replace("{a} + {b}?", "{a} + {zz}?"))
    assert tasks_main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "bad.yaml" in out and "prompt" in out and "zz" in out
    assert tasks_main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "AMR-SD task family"


def test_answer_function_runs_in_the_sandbox(tmp_path):
    text = GOOD.replace(
        'answer: {expr: "s"}',
        'answer:\n  function: |\n    def answer(a, b):\n        import os\n        return a * 100 + b\n  format: str',
    )
    fam = load_task_file(write(tmp_path, "fn.yaml", text))
    inst = fam.instance(3)
    assert inst.answer == str(inst.params["a"] * 100 + inst.params["b"])


def test_answer_function_that_raises_names_the_field(tmp_path):
    text = GOOD.replace(
        'answer: {expr: "s"}', 'answer:\n  function: |\n    def answer(a, b):\n        raise RuntimeError("boom")'
    )
    err = errors_of(write(tmp_path, "fn.yaml", text))
    (issue,) = err.issues
    assert issue.loc == "answer.function" and "boom" in issue.msg
