"""The built-in tool-use suite (tasks/tooluse/*.yaml) and the world_state verifier.

Everything here runs for real: the sandboxed python tool, SQLite worlds, the inventory HTTP service on loopback, the
math/numeric verifiers. The oracle of every family is played through ``gym.make("AMRSD-ToolUse-v0")`` and must be
rewarded on every instance tried; wrong answers and wrong (or missing) world changes must not be.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import gymnasium as gym
import httpx
import pint
import pytest
from gymnasium.utils.env_checker import check_env

import amrsd_envs  # noqa: F401  (registers the env ids)
from amrsd_envs.catalog import builtin_tasks_dir, load_task_file, load_tasks
from amrsd_envs.oracle import OraclePolicy, oracle_messages
from amrsd_envs.testing.inventory_service import InventoryService, catalog_for_seed
from amrsd_envs.toolcalls import parse_tool_calls
from amrsd_envs.tools import ToolWorld, create_sqlite_world
from amrsd_envs.verifiers import VERIFIERS, check, parse_options
from amrsd_envs.verifiers.world_state import WorldStateOptions

TOOLUSE_DIR = builtin_tasks_dir() / "tooluse"
CATALOG = load_tasks(TOOLUSE_DIR)
FAMILIES = sorted(f.id for f in CATALOG)
REQUIRED = [
    "tooluse.calc_arith", "tooluse.calc_chain", "tooluse.python_compute", "tooluse.unit_chain",
    "tooluse.molar_lookup", "tooluse.constant_compute", "tooluse.sql_query", "tooluse.sql_update",
    "tooluse.http_order", "tooluse.http_query",
]  # fmt: skip
# Families whose variety is in the per-episode world (the same few questions over different databases/catalogs):
# their distinctness is measured on (prompt, world), not on the prompt alone.
WORLD_VARIETY = {"tooluse.sql_query", "tooluse.sql_update", "tooluse.http_order", "tooluse.http_query"}
WORLD_STATE_FAMILIES = {"tooluse.sql_update", "tooluse.http_order"}
ORACLE_INSTANCES = 30  # at the default level, per family
ORACLE_INSTANCES_OTHER_LEVELS = 5  # at each other level


@pytest.fixture(scope="module")
def envs():
    """One ToolUse env per difficulty level (built on first use), closed at the end of the module."""
    made: dict[int, gym.Env] = {}

    def get(level: int) -> gym.Env:
        if level not in made:
            made[level] = gym.make("AMRSD-ToolUse-v0", difficulty=level)
        return made[level]

    yield get
    for env in made.values():
        env.close()


def play(env: gym.Env, task_id: str, script: list[str] | None = None) -> tuple[float, dict, list[dict]]:
    """Play ``task_id`` with the oracle (or the given assistant messages): reward, last info, transcript."""
    obs, info = env.reset(options={"task_id": task_id})
    policy = OraclePolicy(env)
    turn, done, reward = 0, False, 0.0
    while not done:
        action = script[turn] if script is not None else policy(obs, info.get("tools"))
        obs, reward, terminated, truncated, info = env.step(action)
        turn += 1
        done = terminated or truncated
    return float(reward), info, obs


def gold_script(env: gym.Env, task_id: str) -> list[str]:
    env.reset(options={"task_id": task_id})
    return oracle_messages(env.unwrapped.task, env.unwrapped.catalog)


# ----------------------------------------------------------------------------------------------------------------
# the files


def test_suite_has_the_required_families():
    missing = sorted(set(REQUIRED) - set(FAMILIES))
    assert not missing, f"missing tool-use families: {missing}"
    assert len(FAMILIES) >= 10


@pytest.mark.parametrize("family_id", FAMILIES)
def test_family_declares_what_a_tooluse_family_needs(family_id):
    fam = CATALOG[family_id]
    spec = fam.spec
    assert spec.domain == "tooluse" and family_id.startswith("tooluse.")
    assert 3 <= spec.max_turns <= 6, f"{family_id}: max_turns {spec.max_turns} outside 3..6"
    assert spec.difficulty.levels == 3
    assert spec.reference and spec.oracle and spec.tools
    assert spec.generator is not None and spec.generator.count >= 1000
    task = fam.instance(0)
    script = oracle_messages(task, CATALOG)
    assert len(script) <= spec.max_turns
    called = set()
    for message in script[:-1]:
        parsed = parse_tool_calls(message)
        assert parsed.calls and not parsed.errors, f"{family_id}: oracle step without a valid tool call: {message!r}"
        called |= {c.name for c in parsed.calls}
    assert not parse_tool_calls(script[-1]).calls, "the oracle's last message is the final answer"
    assert called == set(spec.tools), f"{family_id}: declares tools {spec.tools} but its oracle calls {sorted(called)}"


def test_every_file_loads_on_its_own_at_every_level():
    for path in sorted(TOOLUSE_DIR.glob("*.yaml")):
        for level in (1, 2, 3):
            fam = load_task_file(path, difficulty=level)  # validates the first instances too
            assert fam.instance(0).difficulty == level


# ----------------------------------------------------------------------------------------------------------------
# oracles through the real env


@pytest.mark.parametrize("family_id", FAMILIES)
def test_oracle_is_rewarded_through_the_env(family_id, envs):
    default = CATALOG[family_id].spec.difficulty.default
    plan = [(default, i) for i in range(ORACLE_INSTANCES)]
    plan += [(lvl, i) for lvl in (1, 2, 3) if lvl != default for i in range(ORACLE_INSTANCES_OTHER_LEVELS)]
    failures = []
    for level, index in plan:
        task_id = f"{family_id}/{index:05d}"
        reward, info, transcript = play(envs(level), task_id)
        if reward != 1.0:
            tools = [m["content"][:200] for m in transcript if m["role"] == "tool"]
            failures.append(f"{task_id} (level {level}): {info.get('verification')}; tool results: {tools}")
    assert not failures, f"{len(failures)}/{len(plan)} oracle episodes failed:\n" + "\n".join(failures[:5])


def _wrong_final(task) -> str:
    """A final answer that differs from the gold in value (with the gold's unit, so it is not a format failure)."""
    if task.verifier == "math":
        return f"\\boxed{{{task.answer} + 1}}"
    number, _, unit = task.answer.partition(" ")
    return f"\\boxed{{{float(number) * 1.1:.6g} {unit}}}".replace(" }", "}")


@pytest.mark.parametrize("family_id", sorted(set(FAMILIES) - WORLD_STATE_FAMILIES))
def test_wrong_final_answer_gets_no_reward(family_id, envs):
    env = envs(CATALOG[family_id].spec.difficulty.default)
    for index in range(3):
        task_id = f"{family_id}/{index:05d}"
        script = gold_script(env, task_id)
        script[-1] = _wrong_final(env.unwrapped.task)
        reward, info, _ = play(env, task_id, script)
        assert reward == 0.0 and not info["verification"].correct, f"{task_id}: {script[-1]!r} was accepted"


@pytest.mark.parametrize("family_id", sorted(WORLD_STATE_FAMILIES))
def test_leaving_the_world_untouched_gets_no_reward(family_id, envs):
    env = envs(1)
    for index in range(3):
        task_id = f"{family_id}/{index:05d}"
        reward, info, transcript = play(env, task_id, ["done"])
        verdict = info["verification"]
        assert reward == 0.0 and not verdict.correct, f"{task_id}: doing nothing passed"
        assert verdict.feedback != "no world state to check", "the env must hand the (fresh) world to the verifier"


def test_wrong_database_change_gets_no_reward(envs):
    env = envs(1)
    delete = '<tool_call>{"name": "sql", "arguments": {"query": "DELETE FROM orders WHERE id = 1"}}</tool_call>'
    for index in range(3):
        task_id = f"tooluse.sql_update/{index:05d}"
        script = gold_script(env, task_id)
        reward, info, _ = play(env, task_id, [script[0], delete, "done"])  # the right change plus a wrong one
        assert reward == 0.0
        assert "fewer rows" in info["verification"].feedback


def test_ordering_twice_gets_no_reward(envs):
    env = envs(1)
    task_id = "tooluse.http_order/00000"
    script = gold_script(env, task_id)
    post = script[1]
    reward, info, transcript = play(env, task_id, [script[0], post + "\n" + post, "done"])
    assert [m["content"].split("\n")[0] for m in transcript if m["role"] == "tool"][-2:] == ["HTTP 201 Created"] * 2
    assert reward == 0.0 and "more entries" in info["verification"].feedback


def test_check_env_passes():
    env = gym.make("AMRSD-ToolUse-v0")
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


# ----------------------------------------------------------------------------------------------------------------
# variety, determinism, split


@pytest.mark.parametrize("family_id", FAMILIES)
def test_distinct_instances(family_id):
    instances = [CATALOG[family_id].instance(i) for i in range(1200)]
    if family_id in WORLD_VARIETY:
        worlds = {(t.prompt, t.world.model_dump_json()) for t in instances}
        assert len(worlds) >= 1000, f"{family_id}: only {len(worlds)} distinct (prompt, world) pairs in 1200"
    else:
        prompts = {t.prompt for t in instances}
        assert len(prompts) >= 1000, f"{family_id}: only {len(prompts)} distinct prompts in 1200"


@pytest.mark.parametrize("family_id", FAMILIES)
def test_instances_are_deterministic_and_split_as_declared(family_id):
    fresh = load_task_file(CATALOG[family_id].source)
    for index in (0, 7, 999):
        a, b = CATALOG[family_id].instance(index), fresh.instance(index)
        assert (a.prompt, a.answer, a.world, a.split) == (b.prompt, b.answer, b.world, b.split)
    test_share = sum(CATALOG[family_id].split_of(i) == "test" for i in range(1000)) / 1000
    expected = CATALOG[family_id].spec.split.test_fraction
    assert abs(test_share - expected) < 0.05, f"{family_id}: test share {test_share} vs declared {expected}"


# ----------------------------------------------------------------------------------------------------------------
# the data the YAML files carry agrees with its sources


def _choices(family_id: str, param: str) -> list[dict]:
    choices = CATALOG[family_id].spec.generator.params[param].choices
    rows = [row for level in choices.values() for row in level] if isinstance(choices, dict) else list(choices)
    return rows


def test_inventory_snapshots_match_the_service():
    for family_id in ("tooluse.http_order", "tooluse.http_query"):
        for shop in _choices(family_id, "shop"):
            live = [[i.sku, i.name, i.price_cents, i.stock] for i in catalog_for_seed(shop["seed"]).values()]
            assert shop["items"] == live, f"{family_id}: snapshot of seed {shop['seed']} is stale"


def test_unit_factors_match_pint():
    ureg = pint.UnitRegistry()
    for row in _choices("tooluse.unit_chain", "u"):
        for a, b, f in ((row["a"], row["b"], row["f1"]), (row["b"], row["c"], row["f2"])):
            assert ureg.Quantity(1, a).to(b).magnitude == pytest.approx(f, rel=1e-9), f"{a} -> {b}"
    for row in _choices("tooluse.compose", "u"):
        assert ureg.Quantity(1, row["unit"]).to("m^3").magnitude == pytest.approx(row["f"], rel=1e-9), row["unit"]


def test_densities_match_the_facts_table():
    facts = {r["name"]: r for r in json.loads((builtin_tasks_dir() / "data" / "facts.json").read_text())["facts"]}
    for row in _choices("tooluse.compose", "s"):
        assert facts[row["name"]]["density_kg_m3"] == row["rho"], row["name"]


def test_constant_compute_formulas_give_textbook_values():
    """One hand-checked value per kind, so a typo in a formula template cannot pass as a consistent gold."""
    expected = {  # question fragment -> (input, value in the kind's unit), computed by hand from CODATA 2018
        "photon": ("500", 3.97289e-19),  # h c / 500 nm
        "thermal": ("300", 0.0258520),  # k_B 300 K / e
        "charge": ("1", 96485.33),  # Faraday's constant
        "de Broglie": ("1e+06", 0.727389),  # h / (m_e 10^6 m/s), nm
        "kinetic": ("1e+06", 2.842815),  # m_e (10^6)^2 / 2 / e
        "Coulomb": ("1", 2.307078e-10),  # k_e e^2 / (1 nm)^2
    }
    from amrsd_envs.expressions import const, evaluate

    for row in _choices("tooluse.constant_compute", "k"):
        key = next(k for k in expected if k in row["q"])
        x, value = expected[key]
        text = row["f"] % {"x": x, "c1": "%.12g" % const(row["c1"]), "c2": "%.12g" % const(row["c2"])}
        assert float(evaluate(f"sympify({text!r})", {})) == pytest.approx(value, rel=1e-5), key


# ----------------------------------------------------------------------------------------------------------------
# the world_state verifier


SHOP_SCHEMA = "CREATE TABLE t (id INTEGER PRIMARY KEY, status TEXT, price REAL);"
SHOP_SEED = "INSERT INTO t VALUES (1, 'pending', 12.0), (2, 'shipped', 3.5), (3, 'pending', 7.25);"


@pytest.fixture()
def db_world(tmp_path: Path) -> ToolWorld:
    return ToolWorld(sqlite_path=create_sqlite_world(SHOP_SCHEMA, SHOP_SEED, tmp_path / "w.db"))


def _sql(world: ToolWorld, statement: str) -> None:
    conn = sqlite3.connect(world.sqlite_path)
    conn.execute(statement)
    conn.commit()
    conn.close()


def test_world_state_is_registered_with_a_schema_without_world():
    assert "world_state" in VERIFIERS
    schema = WorldStateOptions.model_json_schema()
    assert "world" not in schema["properties"] and schema["additionalProperties"] is False
    assert {"sql", "service", "also_answer", "rtol"} <= set(schema["properties"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs `sql` and/or `service`"),
        ({"also_answer": "math"}, "needs `sql` and/or `service`"),
        ({"sql": "DELETE FROM t"}, "read-only query"),
        ({"service": "orders..qty"}, "empty segment"),
        ({"sql": "SELECT 1", "answer_options": {"rtol": 0.1}}, "also_answer is not"),
        ({"sql": "SELECT 1", "also_answer": "numeric", "answer_options": {"rtoll": 0.1}}, "rtoll"),
        ({"sql": "SELECT 1", "world": {"sqlite_path": "x"}}, "injected by the env"),
        ({"sql": "SELECT 1", "rows": 3}, "unknown option"),
    ],
)
def test_world_state_options_are_validated(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_options("world_state", options)


def test_sql_check_unordered_with_tolerance(db_world):
    _sql(db_world, "UPDATE t SET price = price * 1.1 WHERE status = 'pending'")  # 13.200000000000001, 7.975
    gold = json.dumps([[3, "pending", 7.975], [1, "pending", 13.2], [2, "shipped", 3.5]])  # any order: no ORDER BY
    query = "SELECT id, status, price FROM t"
    v = check("world_state", gold, "done", sql=query, world=db_world)
    assert v.correct and v.extracted.startswith("sql: ")
    assert not check("world_state", gold, "done", sql=query, world=db_world, ordered=True).correct


def test_sql_check_ordered_reports_the_column_not_the_value(db_world):
    gold = json.dumps([[1, "shipped", 12.0], [2, "shipped", 3.5], [3, "pending", 7.25]])
    query = "SELECT id, status, price FROM t ORDER BY id"
    v = check("world_state", gold, "done", sql=query, world=db_world)
    assert not v.correct and v.feedback == "database: a row differs in column 'status'"
    assert "shipped" not in v.feedback and "pending" in v.extracted  # the observed row is shown, the gold is not
    _sql(db_world, "UPDATE t SET status = 'shipped' WHERE id = 1")
    assert check("world_state", gold, "done", sql=query, world=db_world).correct


def test_sql_check_row_count_and_broken_tables(db_world):
    query = "SELECT id FROM t ORDER BY id"
    assert "fewer rows" in check("world_state", "[[1], [2], [3], [4]]", "", sql=query, world=db_world).feedback
    assert "more rows" in check("world_state", "[[1], [2]]", "", sql=query, world=db_world).feedback
    _sql(db_world, "DROP TABLE t")
    v = check("world_state", "[[1], [2], [3]]", "", sql=query, world=db_world)
    assert not v.correct and "check query failed" in v.feedback and "no such table" in v.feedback


def test_sql_check_is_read_only(db_world):
    sneaky = "WITH x AS (SELECT 1) DELETE FROM t"  # starts like a read query; the read-only connection refuses it
    v = check("world_state", "[]", "", sql=sneaky, world=db_world)
    assert not v.correct and "readonly" in v.feedback.replace("-", "").replace(" ", "").lower()
    conn = sqlite3.connect(db_world.sqlite_path)
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (3,)
    conn.close()


def test_missing_world_and_bad_gold(db_world):
    v = check("world_state", "[[1]]", "done", sql="SELECT id FROM t")
    assert not v.correct and v.feedback == "no world state to check" and v.extracted is None
    with pytest.raises(ValueError, match="must be JSON"):
        check("world_state", "not json", "", sql="SELECT id FROM t", world=db_world)
    with pytest.raises(ValueError, match="list of rows"):
        check("world_state", '{"a": 1}', "", sql="SELECT id FROM t", world=db_world)
    with pytest.raises(ValueError, match="gold keys must be exactly"):
        check("world_state", '{"sql": []}', "", sql="SELECT id FROM t", also_answer="exact", world=db_world)
    with pytest.raises(ValueError, match="no HTTP service"):
        check("world_state", "[]", "", service="orders", world=db_world)


def test_sql_check_with_also_answer(db_world):
    gold = json.dumps({"sql": [[3]], "answer": "3"})
    options = dict(sql="SELECT COUNT(*) FROM t", also_answer="math", world=db_world)
    assert check("world_state", gold, "There are \\boxed{3} rows.", **options).correct
    v = check("world_state", gold, "There are \\boxed{4} rows.", **options)
    assert not v.correct and v.feedback.startswith("final answer: ") and "answer: 4" in v.extracted
    _sql(db_world, "DELETE FROM t WHERE id = 1")
    v = check("world_state", gold, "There are \\boxed{3} rows.", **options)
    assert not v.correct and v.feedback.startswith("database: ")


def test_service_check_on_a_live_inventory():
    with InventoryService(seed=5) as service:
        world = ToolWorld(service=service)
        sku, item = next((s, i) for s, i in catalog_for_seed(5).items() if i.stock >= 2)
        gold = json.dumps([{"sku": sku, "qty": 2, "total_cents": 2 * item.price_cents}])
        v = check("world_state", gold, "done", service="orders", world=world)
        assert not v.correct and v.feedback == "service state: 'orders' has fewer entries than expected"
        assert httpx.post(f"{service.base_url}/orders", json={"sku": sku, "qty": 1}).status_code == 201
        v = check("world_state", gold, "done", service="orders", world=world)
        assert not v.correct and v.feedback == "service state: 'qty' has a different value" and sku not in v.feedback
        httpx.post(f"{service.base_url}/reset", json={"seed": 5})
        httpx.post(f"{service.base_url}/orders", json={"sku": sku, "qty": 2})
        v = check("world_state", gold, "done", service="orders", world=world)
        assert v.correct and '"order_id":1' in v.extracted  # fields the gold omits are not compared
        assert check("world_state", str(item.stock - 2), "", service=f"items.{sku}.stock", world=world).correct
        v = check("world_state", "1", "", service="items.SKU-0.stock", world=world)
        assert not v.correct and "nothing at 'items.SKU-0.stock'" in v.feedback
        both = json.dumps({"service": item.stock - 2, "answer": "done"})
        assert check(
            "world_state", both, "done", service=f"items.{sku}.stock", also_answer="exact", world=world
        ).correct
