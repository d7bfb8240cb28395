"""The catalog layer: one builder per kind of family, one bounded task sampler for env, trainer and evaluation, the
per-process parse cache, and loading only the families asked for."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import amrsd_envs  # noqa: F401  (registers the env ids)
from amrsd_envs import spec as spec_module
from amrsd_envs.builders import (
    BUILDERS,
    DatasetBuilder,
    FixedBuilder,
    GeneratedBuilder,
    shared_answer_sandbox,
)
from amrsd_envs.catalog import TaskCatalog, TaskSampler, load_task_file, load_tasks
from amrsd_envs.errors import TaskSpecError
from amrsd_envs.sandbox import ExecResult
from amrsd_envs.spec import parse_task_file, task_file_header

GENERATOR = """\
id: {id}
domain: math
split: {{test_fraction: {test_fraction}, seed: 0}}
generator:
  seed: 3
  count: 400
  params:
    a: {{type: int, range: [1, 90]}}
    b: {{type: int, range: [1, 90]}}
prompt: "What is {{a}} + {{b}}?"
answer: {{expr: "a + b"}}
verifier: {{type: math}}
"""

FIXED = """\
id: {id}
domain: science
split: {{test_fraction: {test_fraction}, seed: 0}}
verifier: {{type: exact}}
reference: "It is {{answer}}."
instances:
  - {{id: q1, prompt: "One?", answer: "1"}}
  - {{id: q2, prompt: "Two?", answer: "2"}}
  - {{id: q3, prompt: "Three?", answer: "3"}}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def generator(folder: Path, family_id: str = "t.add", test_fraction: float = 0.2, name: str | None = None) -> Path:
    return write(folder, name or f"{family_id}.yaml", GENERATOR.format(id=family_id, test_fraction=test_fraction))


def fixed(folder: Path, family_id: str = "t.fixed", test_fraction: float = 0.2, name: str | None = None) -> Path:
    return write(folder, name or f"{family_id}.yaml", FIXED.format(id=family_id, test_fraction=test_fraction))


def dataset(folder: Path) -> Path:
    rows = [{"q": f"{i} + 1?", "a": f"#### {i + 1}", "key": f"r{i}"} for i in range(5)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return write(folder, "t.rows.yaml", """\
        id: t.rows
        domain: math
        verifier: {type: math}
        prompt: "{question}"
        dataset: {path: rows.jsonl, fields: {question: q, answer: a, id: key}, answer_regex: "#### (.+)$"}
        """)


# -- builders ------------------------------------------------------------------------------------------------------


def test_each_kind_of_family_gets_its_builder(tmp_path):
    assert set(BUILDERS) == {"instances", "generator", "dataset"}
    families = {
        FixedBuilder: load_task_file(fixed(tmp_path)),
        GeneratedBuilder: load_task_file(generator(tmp_path)),
        DatasetBuilder: load_task_file(dataset(tmp_path)),
    }
    for kind, fam in families.items():
        assert type(fam.builder) is kind
        for i in range(3):
            built = fam.builder.build(i)
            assert built == fam.instance(i) and built.index == i
            assert fam.builder.index_of(built.id) == i
            assert fam.instance_by_id(built.id) == built
            assert fam.split_of(i) == built.split
        assert fam.builder.index_of(f"{fam.id}/nope") is None


def test_fixed_builder_keeps_ids_and_renders_the_family_reference(tmp_path):
    fam = load_task_file(fixed(tmp_path))
    inst = fam.instance(1)
    assert (inst.id, inst.prompt, inst.answer, inst.reference) == ("t.fixed/q2", "Two?", "2", "It is 2.")
    assert fam.builder.split_key(1) == "t.fixed/q2"  # the split of an item needs no build


def test_generated_builder_draws_by_index_and_keys_the_split_on_the_parameters(tmp_path):
    fam = load_task_file(generator(tmp_path))
    inst = fam.instance(7)
    assert inst.id == "t.add/00007" and inst.answer == str(inst.params["a"] + inst.params["b"])
    assert fam.builder.split_key(7) is None  # only the drawn parameters decide
    assert fam.builder.index_of("t.add/00007") == fam.builder.index_of("t.add/7") == 7


def test_dataset_builder_reads_rows_once_and_takes_ids_from_the_id_column(tmp_path):
    fam = load_task_file(dataset(tmp_path))
    assert len(fam) == 5
    inst = fam.instance(2)
    assert (inst.id, inst.prompt, inst.answer) == ("t.rows/r2", "2 + 1?", "3")
    assert fam.builder.rows() is fam.builder.rows()


class RecordingSandbox:
    """A stand-in sandbox: answers every call with 42 and records the code it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, code: str, **kwargs: object) -> ExecResult:
        self.calls.append(code)
        return ExecResult(stdout=json.dumps("42") + "\n", stderr="", exit_code=0, timed_out=False, duration_s=0.0,
                          truncated=False)


def _function_family(folder: Path) -> Path:
    text = GENERATOR.format(id="t.fn", test_fraction=0.2).replace(
        'answer: {expr: "a + b"}', "answer:\n  function: |\n    def answer(a, b):\n        return a + b\n  format: str"
    )
    return write(folder, "t.fn.yaml", text)


def test_answer_functions_run_in_the_callers_sandbox(tmp_path):
    sandbox = RecordingSandbox()
    fam = load_task_file(_function_family(tmp_path), sandbox=sandbox)
    assert fam.instance(0).answer == "42"
    assert sandbox.calls and all("def answer(a, b)" in code for code in sandbox.calls)
    catalog = load_tasks(tmp_path, families=["t.fn"], sandbox=sandbox)
    n = len(sandbox.calls)
    catalog["t.fn"].instance(30)
    assert len(sandbox.calls) == n + 1


def test_answer_functions_without_a_sandbox_share_one_per_process(tmp_path):
    fam = load_task_file(_function_family(tmp_path))
    other = load_task_file(_function_family(tmp_path / "other"))
    for i in range(3):
        inst = fam.instance(10 + i)
        assert inst.answer == str(inst.params["a"] + inst.params["b"])
        other.instance(20 + i)
    shared = shared_answer_sandbox()
    assert shared is shared_answer_sandbox() and shared.starts == 1


# -- the sampler ---------------------------------------------------------------------------------------------------


def _reference_draws(catalog: TaskCatalog, split: str, rng: np.random.Generator, n: int) -> list[str]:
    """The rejection loop the env and the trainer each had before the shared sampler (unbounded)."""
    ids = sorted(f.id for f in catalog)
    out: list[str] = []
    while len(out) < n:
        fam = catalog[ids[int(rng.integers(len(ids)))]]
        index = int(rng.integers(len(fam)))
        if fam.split_of(index) == split:
            out.append(fam.instance(index).id)
    return out


@pytest.mark.parametrize("split", ["train", "test"])
def test_sampler_draws_what_the_old_loops_drew(tmp_path, split):
    generator(tmp_path)
    fixed(tmp_path)
    catalog = load_tasks(tmp_path)
    got = [t.id for t in TaskSampler(catalog, split).sample(np.random.default_rng([5, 1]), 12)]
    assert got == _reference_draws(catalog, split, np.random.default_rng([5, 1]), 12)
    assert all(catalog.get(t).split == split for t in got)


def test_sampler_names_family_and_split_when_the_split_is_empty(tmp_path):
    catalog = load_tasks(generator(tmp_path, test_fraction=1.0))
    with pytest.raises(ValueError, match=r"'train' split is empty in family t\.add \(split\.test_fraction=1\.0"):
        TaskSampler(catalog, "train")
    assert len(TaskSampler(catalog, "test").sample(np.random.default_rng(0), 3)) == 3
    with pytest.raises(KeyError, match="did you mean t.add"):
        TaskSampler(catalog, "test", ["t.ad"])


def test_sampler_is_bounded_when_the_split_is_nearly_empty(tmp_path):
    fam_path = fixed(tmp_path, test_fraction=1e-9)
    catalog = load_tasks(fam_path)
    assert all(catalog["t.fixed"].split_of(i) == "train" for i in range(3))
    sampler = TaskSampler(catalog, "test", max_draws=50)
    with pytest.raises(ValueError, match=r"no 'test' instance in 50 random draws from family t\.fixed"):
        sampler.draw(np.random.default_rng(0))


def test_first_lists_each_familys_first_instances_round_robin(tmp_path):
    generator(tmp_path)
    fixed(tmp_path)
    catalog = load_tasks(tmp_path)
    first = [t.id for t in TaskSampler(catalog, "train").first(6)]
    add = [catalog["t.add"].instance(i).id for i in catalog["t.add"].indices("train")][:3]
    fix = [catalog["t.fixed"].instance(i).id for i in catalog["t.fixed"].indices("train")]
    assert first[0::2] == add and first[1::2] == fix[:3]
    env = gym.make("AMRSD-All-v0", tasks=catalog)
    assert env.unwrapped.task_ids("train", 6) == first
    env.close()


def test_env_reset_on_an_empty_split_raises_naming_the_family(tmp_path):
    env = gym.make("AMRSD-Science-v0", tasks=fixed(tmp_path, test_fraction=0.0))
    with pytest.raises(ValueError, match=r"'test' split is empty in family t\.fixed"):
        env.reset(seed=0, options={"split": "test"})
    assert env.reset(seed=0)[1]["split"] == "train"
    env.close()


@pytest.mark.timeout(120)
def test_trainer_sampler_with_test_fraction_one_fails_instead_of_spinning(tmp_path):
    trainer = pytest.importorskip("amrsd_train.trainer")
    with pytest.raises(ValueError, match=r"'train' split is empty in family t\.add"):
        trainer.StepTaskSampler(load_tasks(generator(tmp_path, test_fraction=1.0)), seed=0)


@pytest.mark.timeout(120)
def test_trainer_sampler_draws_the_same_ids_for_a_seed_as_before(tmp_path):
    trainer = pytest.importorskip("amrsd_train.trainer")
    generator(tmp_path)
    fixed(tmp_path)
    catalog = load_tasks(tmp_path)
    sampler = trainer.StepTaskSampler(catalog, seed=11)
    for step in (0, 3):
        assert sampler.sample(step, 5) == _reference_draws(catalog, "train", np.random.default_rng([11, step]), 5)


# -- the parse cache -----------------------------------------------------------------------------------------------


def test_an_unchanged_file_is_parsed_once(tmp_path):
    path = generator(tmp_path)
    assert parse_task_file(path) is parse_task_file(path)
    a, b = load_task_file(path), load_task_file(path)
    assert a is not b and a.spec is b.spec  # each load has its own instance cache
    assert a.instance(3) == b.instance(3)


def test_a_changed_file_is_read_again(tmp_path):
    path = generator(tmp_path)
    first = parse_task_file(path)
    path.write_text(path.read_text().replace("seed: 3", "seed: 4"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert parse_task_file(path).generator.seed == 4 and first.generator.seed == 3


def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(tmp_path):
    # a coarse filesystem clock can stamp two quick writes alike: a fresh file's bytes are compared, not trusted
    path = generator(tmp_path)
    st = path.stat()
    assert parse_task_file(path).generator.seed == 3
    path.write_text(path.read_text().replace("seed: 3", "seed: 8"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    assert parse_task_file(path).generator.seed == 8


def test_a_broken_file_gives_the_same_error_every_time(tmp_path):
    path = write(tmp_path, "broken.yaml", "id: x.y\ndomain: math\nprompt: [unclosed\n")
    errors = []
    for _ in range(2):
        with pytest.raises(TaskSpecError) as info:
            load_task_file(path)
        errors.append(info.value)
    assert errors[0].issues == errors[1].issues and errors[0] is not errors[1]
    (issue,) = errors[0].issues
    assert issue.file == str(path) and issue.loc == "<yaml>" and "line" in issue.msg


def test_the_pure_python_yaml_loader_reports_the_same_problem(tmp_path, monkeypatch):
    import yaml

    path = write(tmp_path, "broken.yaml", "id: x.y\ndomain: math\nprompt: [unclosed\n")
    with pytest.raises(TaskSpecError) as fast:
        parse_task_file(path)
    spec_module.clear_parse_cache()
    monkeypatch.setattr(spec_module, "YAML_LOADER", yaml.SafeLoader)
    with pytest.raises(TaskSpecError) as slow:
        parse_task_file(path)
    assert [(i.file, i.loc) for i in fast.value.issues] == [(i.file, i.loc) for i in slow.value.issues]
    assert "YAML syntax error" in slow.value.issues[0].msg


# -- data files named by the spec ------------------------------------------------------------------------------------

CHOICES_FROM = """\
id: t.pick
domain: math
generator:
  seed: 1
  count: 100
  params:
    item: {type: choice, choices_from: data/items.json}
prompt: "What is {item[v]}?"
answer: {template: "{item[v]}"}
verifier: {type: exact}
"""


def test_choices_from_reads_a_json_file_next_to_the_spec(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "items.json").write_text(json.dumps([{"v": "a"}, {"v": "b"}]))
    path = write(tmp_path, "pick.yaml", CHOICES_FROM)
    fam = load_task_file(path)
    assert fam.spec.generator.params["item"].choices == [{"v": "a"}, {"v": "b"}]
    assert {fam.instance(i).answer for i in range(20)} == {"a", "b"}
    (tmp_path / "data" / "items.json").write_text(json.dumps([{"v": "c"}]))  # the data file is part of the cache key
    assert {load_task_file(path).instance(i).answer for i in range(5)} == {"c"}


@pytest.mark.parametrize(
    "data, edit, message",
    [
        (None, None, "cannot read"),
        ("[not json", None, "invalid JSON"),
        ('"text"', None, "must hold a list"),
        ("[1]", "    item: {type: choice, choices: [1], choices_from: data/items.json}\n", "not both"),
    ],
)
def test_choices_from_problems_name_the_file_and_field(tmp_path, data, edit, message):
    (tmp_path / "data").mkdir()
    if data is not None:
        (tmp_path / "data" / "items.json").write_text(data)
    text = CHOICES_FROM if edit is None else CHOICES_FROM.replace(
        "    item: {type: choice, choices_from: data/items.json}\n", edit
    )
    path = write(tmp_path, "pick.yaml", text)
    with pytest.raises(TaskSpecError) as info:
        load_task_file(path)
    (issue,) = info.value.issues
    assert issue.file == str(path) and issue.loc == "generator.params.item.choices_from" and message in issue.msg


def test_the_http_families_read_their_catalogue_snapshots_from_tasks_data():
    catalog = load_tasks(families=["tooluse.http_*"])
    for fam in catalog:
        shop = fam.spec.generator.params["shop"]
        assert shop.choices_from == "../data/inventory_catalogs.json" and len(shop.choices) == 160


# -- loading only what was asked for -------------------------------------------------------------------------------


def _suite_with_a_broken_neighbour(folder: Path) -> Path:
    generator(folder, "a.add")
    fixed(folder, "a.fixed")
    return write(folder, "b.yaml", "id: b.broken\ndomain: science\nprompt: [unclosed\n")


def test_families_load_without_parsing_unrelated_files(tmp_path):
    broken = _suite_with_a_broken_neighbour(tmp_path)
    assert [f.id for f in load_tasks(tmp_path, families=["a.add"])] == ["a.add"]
    assert sorted(f.id for f in load_tasks(tmp_path, families=["a.*"])) == ["a.add", "a.fixed"]
    assert [f.id for f in load_tasks(tmp_path, domain="math")] == ["a.add"]
    env = gym.make("AMRSD-Math-v0", tasks=str(tmp_path), families=["a.add"])
    assert env.reset(seed=0)[1]["family"] == "a.add"
    env.close()
    with pytest.raises(TaskSpecError) as info:  # without a filter every file is checked
        load_tasks(tmp_path)
    assert [i.file for i in info.value.issues] == [str(broken)]
    with pytest.raises(TaskSpecError):  # the broken family itself, asked for, is parsed and reported
        load_tasks(tmp_path, families=["b.*"])


def test_validate_still_checks_every_file(tmp_path, capsys):
    from amrsd_envs.cli import tasks_main

    _suite_with_a_broken_neighbour(tmp_path)
    assert tasks_main(["validate", str(tmp_path)]) == 1
    assert "b.yaml" in capsys.readouterr().out


def test_a_file_whose_id_line_is_not_plain_is_parsed_to_find_out(tmp_path):
    write(tmp_path, "flow.yaml", '{"id": "c.flow", "domain": "science", "verifier": {"type": "exact"}, '
          '"instances": [{"id": "q", "prompt": "p", "answer": "a"}]}\n')
    _suite_with_a_broken_neighbour(tmp_path)
    assert task_file_header(tmp_path / "flow.yaml").id is None
    assert task_file_header(tmp_path / "b.yaml").id == "b.broken"
    assert [f.id for f in load_tasks(tmp_path, families=["c.flow"])] == ["c.flow"]


def test_an_unknown_family_pattern_lists_the_known_ones(tmp_path):
    _suite_with_a_broken_neighbour(tmp_path)
    with pytest.raises(KeyError, match=r"no family matches 'a\.nope'.*'a\.add'.*'b\.broken'"):
        load_tasks(tmp_path, families=["a.nope"])
