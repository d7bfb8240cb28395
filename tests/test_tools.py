"""The tool registry, schemas, executor and every built-in tool, each run for real.

The http tests talk to the real inventory service on loopback; the python tests run the local
sandbox; the sql tests use real SQLite files.
"""

from __future__ import annotations

import http.server
import json
import math
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, ConfigDict, Field

from amrsd_envs.testing.inventory_service import InventoryService, catalog_for_seed
from amrsd_envs.toolcalls import ToolCall, parse_tool_calls
from amrsd_envs.tools import (
    BUILTIN_TOOLS,
    PARSE_ERROR_TOOL_NAME,
    TOOLS,
    Tool,
    ToolContext,
    ToolError,
    ToolSession,
    UnknownToolError,
    create_sqlite_world,
    execute_tool_calls,
    get_tool,
    inline_json_schema,
    openai_tool_schemas,
    register_tool,
    tool,
)
from amrsd_envs.tools import base as tools_base
from amrsd_envs.tools.calculator import evaluate_expression
from amrsd_envs.tools.context import default_data_dir, normalize_host
from amrsd_envs.tools.http_request import check_url_allowed
from amrsd_envs.tools.lookup import load_table, lookup_text
from amrsd_envs.tools.units import convert

ALL_BUILTINS = set(BUILTIN_TOOLS)


def run(ctx: ToolContext, name: str, allowed: set[str] | None = None, **arguments: Any) -> str:
    """Content of the single tool message for one call."""
    [message] = execute_tool_calls([ToolCall(name, arguments)], [], ctx, allowed or {name})
    assert message["role"] == "tool" and message["name"] == name
    return message["content"]


def walk(node: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair in a JSON document; property *names* are not keys of a schema node."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    yield from walk(sub)
            else:
                yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


@pytest.fixture
def temp_tools():
    """Register throwaway tools for one test and remove them afterwards."""
    added: list[str] = []

    def add(new_tool: Tool) -> Tool:
        register_tool(new_tool)
        added.append(new_tool.name)
        return new_tool

    yield add
    for name in added:
        tools_base._REGISTRY.pop(name, None)


# -- registry and schemas -------------------------------------------------------------------------------


def test_builtins_are_registered():
    assert ALL_BUILTINS <= set(TOOLS)


@pytest.mark.parametrize("name", sorted(ALL_BUILTINS))
def test_builtin_schema_is_valid_inlined_and_matches_the_model(name):
    spec = get_tool(name)
    schema = spec.schema()
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == name and function["description"].strip()
    params = function["parameters"]
    jsonschema.Draft202012Validator.check_schema(params)
    keys = {key for key, _ in walk(params)}
    assert not keys & {"$ref", "$defs", "title"}
    assert params["type"] == "object" and params["additionalProperties"] is False
    model_fields = spec.args_model.model_fields
    expected_names = {info.alias or field for field, info in model_fields.items()}
    assert set(params["properties"]) == expected_names
    expected_required = {info.alias or field for field, info in model_fields.items() if info.is_required()}
    assert set(params.get("required", [])) == expected_required
    assert all(prop.get("description") for prop in params["properties"].values())
    assert openai_tool_schemas([name]) == [schema]


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("calculator", {"expression": "1+1"}, {"expression": 3}),
        ("convert_units", {"value": 1.5, "from_unit": "m", "to_unit": "km"}, {"value": 1, "from_unit": "m"}),
        ("lookup", {"table": "elements", "key": "Fe"}, {"table": "planets", "key": "Earth"}),
        ("sql", {"query": "SELECT 1"}, {"query": "SELECT 1", "db": "x"}),
        ("http_request", {"method": "POST", "url": "http://h/x", "json": {"a": 1}}, {"method": "PATCH", "url": "u"}),
        ("python", {"code": "print(1)"}, {}),
    ],
)
def test_schema_accepts_what_the_model_accepts(name, good, bad):
    spec = get_tool(name)
    validator = jsonschema.Draft202012Validator(spec.parameters_schema())
    assert validator.is_valid(good)
    spec.args_model.model_validate(good)
    assert not validator.is_valid(bad)
    with pytest.raises(ValueError):
        spec.args_model.model_validate(bad)


class _Inner(BaseModel):
    title: str = Field(description="A property that happens to be called title.")


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inner: _Inner = Field(description="A nested object.")
    items: list[_Inner] = Field(default_factory=list, description="Several nested objects.")


class _Recursive(BaseModel):
    child: _Recursive | None = Field(default=None, description="Same again.")


class _Undocumented(BaseModel):
    x: int


def test_nested_models_are_inlined_and_property_named_title_survives():
    schema = inline_json_schema(_Outer)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["inner"]["properties"]["title"]["type"] == "string"
    assert schema["properties"]["inner"]["description"] == "A nested object."
    assert schema["properties"]["items"]["items"]["required"] == ["title"]
    assert not {key for key, _ in walk(schema)} & {"$ref", "$defs", "title"}
    assert jsonschema.Draft202012Validator(schema).is_valid({"inner": {"title": "t"}})
    assert not jsonschema.Draft202012Validator(schema).is_valid({"inner": {}})


def test_recursive_model_cannot_be_inlined():
    with pytest.raises(ValueError, match="recursive"):
        inline_json_schema(_Recursive)


def test_tool_declaration_is_validated():
    def noop(args: Any, ctx: ToolContext) -> str:
        return ""

    with pytest.raises(ValueError, match=r"\['x'\] have no description"):
        Tool(name="t1", description="d", args_model=_Undocumented, run=noop)
    with pytest.raises(ValueError, match="identifier"):
        Tool(name="bad name", description="d", args_model=_Outer, run=noop)
    with pytest.raises(ValueError, match="description"):
        Tool(name="t2", description=" ", args_model=_Outer, run=noop)
    with pytest.raises(TypeError, match="BaseModel"):
        Tool(name="t3", description="d", args_model=dict, run=noop)  # type: ignore[arg-type]


def test_duplicate_registration_raises(temp_tools):
    temp_tools(Tool(name="_dup_tool", description="d", args_model=_Outer, run=lambda a, c: ""))
    with pytest.raises(ValueError, match="already registered"):
        register_tool(Tool(name="_dup_tool", description="d", args_model=_Outer, run=lambda a, c: ""))
    with pytest.raises(ValueError, match="already registered"):
        tool(name="calculator", description="d", args=_Outer)(lambda a, c: "")


def test_unknown_tool_lists_valid_names_and_closest_match():
    with pytest.raises(KeyError) as info:
        get_tool("calculater")
    message = str(info.value)
    assert "did you mean 'calculator'" in message
    assert "convert_units" in message and "http_request" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, UnknownToolError)


# -- executor -----------------------------------------------------------------------------------------------


class _EchoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="Text to echo.")
    times: int = Field(1, ge=1, description="Repetitions.")


@pytest.fixture
def echo_tools(temp_tools):
    temp_tools(Tool(name="_echo", description="Echo.", args_model=_EchoArgs, run=lambda a, c: a.text * a.times))

    def fail(args: _EchoArgs, ctx: ToolContext) -> str:
        if args.text == "user":
            raise ToolError("you asked for it")
        raise RuntimeError("tool bug")

    temp_tools(Tool(name="_fail", description="Fails.", args_model=_EchoArgs, run=fail))
    temp_tools(Tool(name="_not_text", description="Bad return.", args_model=_EchoArgs, run=lambda a, c: 42))
    return {"_echo", "_fail", "_not_text"}


def test_executor_messages_errors_and_order(echo_tools):
    ctx = ToolContext(calls_per_turn=10)
    calls = [
        ToolCall("_echo", {"text": "hi", "times": 2}),
        ToolCall("_echo", {"times": 2}),
        ToolCall("_echo", {"text": "x", "bogus": 1}),
        ToolCall("_fail", {"text": "user"}),
        ToolCall("_fail", {"text": "bug"}),
        ToolCall("_not_text", {"text": "x"}),
        ToolCall("calculator", {"expression": "1+1"}),
        ToolCall("_ecko", {"text": "x"}),
    ]
    messages = execute_tool_calls(calls, ["tool call #9: invalid JSON"], ctx, echo_tools)
    assert [m["name"] for m in messages] == [c.name for c in calls] + [PARSE_ERROR_TOOL_NAME]
    assert all(m["role"] == "tool" for m in messages)
    contents = [m["content"] for m in messages]
    assert contents[0] == "hihi"
    assert contents[1].startswith("error: invalid arguments for '_echo'") and "text: Field required" in contents[1]
    assert "bogus: Extra inputs are not permitted" in contents[2]
    assert contents[3] == "error: you asked for it"
    assert contents[4] == "error: tool '_fail' failed internally: RuntimeError: tool bug"
    assert "returned int instead of text" in contents[5]
    assert contents[6].startswith("error: tool 'calculator' is not available in this task")
    assert contents[7].startswith("error: unknown tool '_ecko' (did you mean '_echo'?)")
    assert contents[8] == "error: tool call #9: invalid JSON"
    assert ctx.calls_made == len(calls)


def test_per_turn_and_total_caps(echo_tools):
    ctx = ToolContext(calls_per_turn=2, calls_total=3)
    first = execute_tool_calls([ToolCall("_echo", {"text": str(i)}) for i in range(3)], [], ctx, echo_tools)
    assert [m["content"] for m in first[:2]] == ["0", "1"]
    assert first[2]["content"].startswith("error: not run: at most 2 tool calls are run per message")
    second = execute_tool_calls([ToolCall("_echo", {"text": "a"}), ToolCall("_echo", {"text": "b"})], [], ctx, echo_tools)
    assert second[0]["content"] == "a"
    assert "limit of 3 tool calls is used up" in second[1]["content"]
    assert ctx.calls_made == 3


def test_output_is_truncated_with_marker(echo_tools):
    ctx = ToolContext(output_limit_chars=200)
    [message] = execute_tool_calls([ToolCall("_echo", {"text": "x" * 1000})], [], ctx, echo_tools)
    assert len(message["content"]) <= 200
    assert message["content"].startswith("x" * 100)
    assert message["content"].endswith("more characters]") and "[truncated: " in message["content"]
    kept = message["content"].index("\n[truncated")
    assert f"[truncated: {1000 - kept} more characters]" in message["content"]


def test_parse_errors_become_tool_messages_from_model_text():
    parsed = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": {"expression": "2^5"}}</tool_call>'
                              '<tool_call>{"name": }</tool_call>')
    messages = execute_tool_calls(parsed.calls, parsed.errors, ToolContext(), {"calculator"})
    assert messages[0]["content"] == "32"
    assert messages[1]["name"] == PARSE_ERROR_TOOL_NAME and messages[1]["content"].startswith("error: tool call #2")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"python_timeout_s": 0}, ValueError),
        ({"sql_timeout_s": math.inf}, ValueError),
        ({"calls_per_turn": 0}, ValueError),
        ({"output_limit_chars": 10}, ValueError),
        ({"allowed_hosts": "127.0.0.1:80"}, TypeError),
        ({"allowed_hosts": {"http://127.0.0.1"}}, ValueError),
        ({"allowed_hosts": {"127.0.0.1:0"}}, ValueError),
    ],
)
def test_context_rejects_bad_settings(kwargs, error):
    with pytest.raises(error):
        ToolContext(**kwargs)


def test_host_normalization():
    assert normalize_host("LOCALHOST:08080") == "localhost:8080"
    assert normalize_host("[::1]:80") == "[::1]:80"
    assert normalize_host("::1") == "[::1]"
    assert normalize_host("example.org") == "example.org"


# -- calculator ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("7/3", "7/3 ≈ 2.33333333333333"),
        ("2^10", "1024"),
        ("0.1 + 0.2", "3/10 ≈ 0.3"),
        ("sqrt(8)", "2*sqrt(2) ≈ 2.82842712474619"),
        ("pi", "pi ≈ 3.14159265358979"),
        ("log(8, 2)", "3"),
        ("ln(E^3)", "3"),
        ("sin(pi/6)", "1/2 ≈ 0.5"),
        ("factorial(20)", "2432902008176640000 ≈ 2.43290200817664e+18"),
        ("binomial(10, 3)", "120"),
        ("gcd(12, 18) + lcm(4, 6)", "18"),
        ("7 // 2 + 7 % 2", "4"),
        ("abs(-3) * floor(2.5) * ceiling(0.2)", "6"),
        ("sqrt(-4)", "2*I ≈ 2.0*I"),
        ("3 × 4 ÷ 2 − 1", "5"),
        ("2**100", "1267650600228229401496703205376 ≈ 1.26765060022823e+30"),
        ("exp(1000)", "exp(1000) ≈ 1.97007111401705e+434"),
        ("1.0001**1000000", "≈ 2.67471099314214e+43"),
        ("I**(10**100)", "≈ 1.0"),
        ("-" * 40 + "1", "1"),
    ],
)
def test_calculator_values(expression, expected):
    assert evaluate_expression(expression) == expected
    assert run(ToolContext(), "calculator", expression=expression) == expected


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("(1).__class__", "attribute access"),
        ("().__class__.__bases__[0].__subclasses__()", "attribute access"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("lambda: 1", "Lambda syntax is not allowed"),
        ("[x for x in (1, 2)]", "ListComp syntax is not allowed"),
        ("'a' * 3", "only numbers are allowed"),
        ("x + 1", "unknown name 'x'"),
        ("sqrt", "is a function"),
        ("sqrt(x=4)", "positional arguments only"),
        ("sqrt(1, 2, 3)", "wrong number of arguments"),
        ("1 if 1 else 2", "IfExp"),
        ("a := 3", "cannot parse"),
        ("1/0", "division by zero"),
        ("log(0)", "undefined or infinite"),
        ("tan(pi/2)", "undefined or infinite"),
        ("factorial(2.5)", "takes integers"),
        ("5 & 3", "not supported"),
        ("True + 1", "only numbers are allowed"),
        ("1" * 501, "limit is 500"),
        ("", "empty expression"),
        ("2j", "write them with I"),
        ("-" * 80 + "1", "nested too deeply"),
        ("floor(exp(11000))", "cannot evaluate"),
    ],
)
def test_calculator_refusals(expression, fragment):
    with pytest.raises(ToolError) as info:
        evaluate_expression(expression)
    assert fragment in str(info.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "expression",
    [
        "9**9**9",
        "9**9**9**9",
        "2**(10**100)",
        "(2**5000)**(2**5000)",
        "10.0**(10**6)",
        "sqrt(2)**(10**9)",
        "root(2, 1/10**9)",
        "factorial(10**9)",
        "binomial(10**9, 5*10**8)",
        "exp(exp(exp(100)))",
        "sinh(10**6)",
        "2**-100000",
        "1e99999",
    ],
)
def test_calculator_refuses_huge_values_quickly(expression):
    with pytest.raises(ToolError, match="too (large|small)|out of range"):
        evaluate_expression(expression)


def test_calculator_large_but_bounded_values():
    # Above the exact-size bound the result is a float, still inside the range.
    assert evaluate_expression("2**12000").startswith("≈ 2.29059320350033e+3612")
    exact = evaluate_expression("2**1000")
    assert exact.startswith("10715086071862673209484250490600018105614048117055336074437503883703510511249361224931983788156958581275946729175531468251871452856923140435984577574698574803934567774824230985421074605062371141877954182153046474983581941267398767559165543946077062914571196477686542167660429831652624386837205668069376") and "≈ 1.07150860718627e+301" in exact


def test_calculator_invalid_arguments_via_executor():
    assert run(ToolContext(), "calculator").startswith("error: invalid arguments for 'calculator': expression: Field required")


# -- convert_units ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (36, "km/h", "m/s", "36 km/h = 10 m/s"),
        (100, "degC", "degF", "100 degC = 212 degF"),
        (1, "eV", "J", "1 eV = 1.602176634e-19 J"),
        (1, "mile", "km", "1 mile = 1.609344 km"),
        (1, "atm", "Pa", "1 atm = 101325 Pa"),
        (2.5, "kWh", "MJ", "2.5 kWh = 9 MJ"),
    ],
)
def test_convert_units(value, source, target, expected):
    assert convert(value, source, target) == expected
    assert run(ToolContext(), "convert_units", value=value, from_unit=source, to_unit=target) == expected


def test_convert_units_errors():
    unknown = run(ToolContext(), "convert_units", value=1, from_unit="meterz", to_unit="km")
    assert unknown.startswith("error: unknown unit 'meterz'") and "meter" in unknown
    incompatible = run(ToolContext(), "convert_units", value=1, from_unit="kg", to_unit="m")
    assert incompatible.startswith("error: cannot convert 'kg' ([mass]) to 'm' ([length])")
    scaled = run(ToolContext(), "convert_units", value=1, from_unit="1000 m", to_unit="km")
    assert scaled.startswith("error: cannot read the units")
    infinite = run(ToolContext(), "convert_units", value=math.inf, from_unit="m", to_unit="km")
    assert infinite.startswith("error: invalid arguments for 'convert_units': value:")


# -- lookup -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["Fe", "fe", "iron", "IRON", "26"])
def test_lookup_element_by_symbol_name_or_number(key):
    record = json.loads(run(ToolContext(), "lookup", table="elements", key=key))
    assert record["symbol"] == "Fe" and record["atomic_number"] == 26 and record["atomic_weight"] == 55.845


def test_lookup_aliases_fields_and_case_rules():
    ctx = ToolContext()
    assert json.loads(run(ctx, "lookup", table="elements", key="cesium"))["symbol"] == "Cs"
    big_g = json.loads(run(ctx, "lookup", table="constants", key="G", field="value"))
    assert big_g == {"name": "Newtonian constant of gravitation", "value": 6.6743e-11, "unit": "m^3 kg^-1 s^-2"}
    assert json.loads(run(ctx, "lookup", table="constants", key="g"))["value"] == 9.80665
    assert json.loads(run(ctx, "lookup", table="constants", key="Speed of Light"))["value"] == 299792458
    mars = json.loads(run(ctx, "lookup", table="facts", key="mars", field="orbital_period_days"))
    assert mars == {"name": "Mars", "orbital_period_days": 686.98}


def test_lookup_errors():
    ctx = ToolContext()
    missing = run(ctx, "lookup", table="elements", key="Irn")
    assert missing.startswith("error: no entry 'Irn' in table 'elements'") and "Iron" in missing
    field = run(ctx, "lookup", table="elements", key="Fe", field="colour")
    assert field.startswith("error: entry 'Iron' has no field 'colour'") and "atomic_weight" in field
    table = run(ctx, "lookup", table="planets", key="Earth")
    assert table.startswith("error: invalid arguments for 'lookup': table:")
    broken = ToolContext(data_dir=Path("/nonexistent"))
    assert run(broken, "lookup", table="facts", key="Earth").startswith("error: lookup table file")


def test_lookup_exact_symbol_wins_and_case_folded_ties_are_ambiguous(tmp_path):
    doc = {"_source": "test", "constants": [{"symbol": "Ab", "name": "first"}, {"symbol": "aB", "name": "second"}]}
    (tmp_path / "constants.json").write_text(json.dumps(doc))
    assert json.loads(lookup_text(tmp_path, "constants", "aB"))["name"] == "second"
    assert json.loads(lookup_text(tmp_path, "constants", "FIRST"))["name"] == "first"
    with pytest.raises(ToolError, match="'ab' is ambiguous"):
        lookup_text(tmp_path, "constants", "ab")


def test_elements_table_is_complete_and_consistent():
    elements = load_table(default_data_dir(), "elements").records
    assert [e["atomic_number"] for e in elements] == list(range(1, 119))
    assert len({e["symbol"] for e in elements}) == 118 and len({e["name"].lower() for e in elements}) == 118
    by_symbol = {e["symbol"]: e for e in elements}
    known = {"H": 1.008, "C": 12.011, "O": 15.999, "Na": 22.98976928, "Cl": 35.45, "Fe": 55.845, "Au": 196.96657,
             "U": 238.02891, "Tc": 98, "Og": 294}
    for symbol, weight in known.items():
        assert by_symbol[symbol]["atomic_weight"] == weight
    for element in elements:
        assert element["atomic_number"] <= element["atomic_weight"] <= 3 * element["atomic_number"] + 2
        assert element["atomic_weight_kind"] in {"standard", "conventional", "mass number of the longest-lived known isotope"}
    assert by_symbol["Og"]["period"] == 7 and by_symbol["He"]["period"] == 1 and by_symbol["K"]["period"] == 4


def test_constants_table_values_and_exact_relations():
    constants = {c["symbol"]: c for c in load_table(default_data_dir(), "constants").records}
    required = {"c", "h", "hbar", "k_B", "N_A", "R", "e", "m_e", "m_p", "G", "g", "epsilon_0", "mu_0", "F", "sigma", "atm"}
    assert required <= set(constants)
    assert all(c["unit"] for c in constants.values())
    value = {k: c["value"] for k, c in constants.items()}
    assert value["c"] == 299792458 and value["h"] == 6.62607015e-34 and value["e"] == 1.602176634e-19
    assert value["k_B"] == 1.380649e-23 and value["N_A"] == 6.02214076e23 and value["atm"] == 101325
    assert value["m_e"] == 9.1093837015e-31 and value["G"] == 6.6743e-11  # CODATA 2018
    assert math.isclose(value["hbar"], value["h"] / (2 * math.pi), rel_tol=1e-9)
    assert math.isclose(value["R"], value["N_A"] * value["k_B"], rel_tol=1e-9)
    assert math.isclose(value["F"], value["N_A"] * value["e"], rel_tol=1e-9)
    assert math.isclose(value["c"] ** 2 * value["mu_0"] * value["epsilon_0"], 1, rel_tol=1e-9)
    sigma = 2 * math.pi**5 * value["k_B"] ** 4 / (15 * value["h"] ** 3 * value["c"] ** 2)
    assert math.isclose(value["sigma"], sigma, rel_tol=1e-9)
    assert all(c["uncertainty"] == 0 for c in constants.values() if c["exact"])


def test_facts_are_sourced_and_physically_consistent():
    table = load_table(default_data_dir(), "facts")
    categories = {r["category"] for r in table.records}
    assert categories <= set(table.source)
    planets = [r for r in table.records if r["category"] == "planet"]
    assert [p["name"] for p in planets] == ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
    # Kepler's third law: T^2 / a^3 is the same for every planet (to 2%: the fact sheets' semi-major
    # axes are osculating values, and Jupiter's pull shifts Saturn's by about 1.5%).
    kepler = [p["orbital_period_days"] ** 2 / p["semi_major_axis_km"] ** 3 for p in planets]
    assert max(kepler) / min(kepler) < 1.02
    big_g = 6.6743e-11
    for p in planets:
        gravity = big_g * p["mass_kg"] / (p["equatorial_radius_km"] * 1e3) ** 2
        assert math.isclose(gravity, p["surface_gravity_m_s2"], rel_tol=0.02), p["name"]
        density = p["mass_kg"] / (4 / 3 * math.pi * (p["mean_radius_km"] * 1e3) ** 3)
        assert math.isclose(density, p["mean_density_kg_m3"], rel_tol=0.01), p["name"]
    water = json.loads(lookup_text(default_data_dir(), "facts", "H2O"))
    assert water["density_kg_m3"] == 997.05 and water["conditions"]


# -- sql ----------------------------------------------------------------------------------------------------

SCHEMA = "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL);"
SEED = ["INSERT INTO accounts VALUES (1, 'ada', 100);", "INSERT INTO accounts VALUES (2, 'bob', 50);"]


@pytest.fixture
def world(tmp_path: Path) -> Path:
    return create_sqlite_world(SCHEMA, SEED, tmp_path / "world.db")


def test_sql_select_and_write_persist(world):
    with ToolContext(sqlite_db=world) as ctx:
        table = run(ctx, "sql", query="SELECT owner, balance FROM accounts ORDER BY id")
        assert table.splitlines() == ["owner | balance", "----- | -------", "ada | 100", "bob | 50", "(2 rows)"]
        assert run(ctx, "sql", query="UPDATE accounts SET balance = balance - 30 WHERE owner = 'ada'") == "OK, 1 row affected"
        assert run(ctx, "sql", query="INSERT INTO accounts VALUES (3, 'cy', NULL)").startswith(
            "error: SQL error: NOT NULL constraint failed"
        )
        assert run(ctx, "sql", query="CREATE TABLE log (x)") == "OK"
    # A separate connection (as the verifier uses) sees the committed state.
    with sqlite3.connect(world) as conn:
        assert conn.execute("SELECT balance FROM accounts WHERE id = 1").fetchone() == (70,)


def test_sql_row_cap_and_one_statement(world):
    with ToolContext(sqlite_db=world, sql_max_rows=3) as ctx:
        many = run(ctx, "sql", query="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n LIMIT 10) SELECT i FROM n")
        assert many.splitlines()[2:5] == ["1", "2", "3"] and "more than 3 rows" in many
        assert run(ctx, "sql", query="SELECT 1; DROP TABLE accounts") == "error: SQL error: send exactly one SQL statement per call"
        assert run(ctx, "sql", query="SELECT count(*) FROM accounts").splitlines()[2] == "2"


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("ATTACH DATABASE '/tmp/other.db' AS other", "ATTACH"),
        ("VACUUM INTO '/tmp/amrsd-vacuum-copy.db'", "ATTACH"),
        ("PRAGMA writable_schema = 1", "PRAGMA writable_schema is not allowed"),
        ("PRAGMA user_version = 7", "PRAGMA user_version is not allowed"),
        ("SELECT load_extension('/tmp/evil.so')", "load_extension() is not allowed"),
        ("BEGIN", "transactions are not allowed"),
        ("SAVEPOINT s1", "savepoints are not allowed"),
    ],
)
def test_sql_authorizer_refusals(world, query, fragment):
    with ToolContext(sqlite_db=world) as ctx:
        result = run(ctx, "sql", query=query)
    assert result.startswith("error: refused:") and fragment in result
    assert not Path("/tmp/amrsd-vacuum-copy.db").exists()


def test_sql_read_only_pragma_allowed(world):
    with ToolContext(sqlite_db=world) as ctx:
        assert "owner" in run(ctx, "sql", query="PRAGMA table_info(accounts)")


@pytest.mark.timeout(30)
def test_sql_long_query_is_interrupted(world):
    with ToolContext(sqlite_db=world, sql_timeout_s=0.5) as ctx:
        started = time.monotonic()
        result = run(ctx, "sql", query="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n) SELECT count(*) FROM n")
        assert result == "error: the statement was interrupted after 0.5 s; simplify it or add LIMIT"
        assert time.monotonic() - started < 10
        # The connection is still usable afterwards.
        assert run(ctx, "sql", query="SELECT 1").splitlines()[2] == "1"


def test_sql_without_database():
    assert run(ToolContext(), "sql", query="SELECT 1") == (
        "error: this episode has no SQLite database; the sql tool cannot be used in this task"
    )


def test_create_sqlite_world_reports_the_failing_part(tmp_path):
    with pytest.raises(ValueError, match="seed item 1 failed"):
        create_sqlite_world(SCHEMA, ["INSERT INTO accounts VALUES (1, 'a', 1);", "INSERT INTO nope VALUES (1);"], tmp_path / "w.db")
    with pytest.raises(ValueError, match="schema failed"):
        create_sqlite_world("CREATE TABLE", "", tmp_path / "w.db")
    path = create_sqlite_world(SCHEMA, "INSERT INTO accounts VALUES (9, 'z', 1);", tmp_path / "w.db")
    again = create_sqlite_world(SCHEMA, "", path)  # replaced, not appended to
    with sqlite3.connect(again) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (0,)


# -- inventory service and http_request ---------------------------------------------------------------------


@pytest.fixture
def service() -> Iterator[InventoryService]:
    with InventoryService(seed=7) as svc:
        yield svc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_inventory_catalog_is_a_function_of_the_seed():
    assert catalog_for_seed(7) == catalog_for_seed(7) == catalog_for_seed("7")
    assert catalog_for_seed(7) != catalog_for_seed(8)
    assert len(catalog_for_seed(0)) == 8


def test_inventory_endpoints_directly(service):
    with httpx.Client(base_url=service.base_url, timeout=5) as client:
        items = client.get("/items").json()["items"]
        assert [i["sku"] for i in items] == sorted(catalog_for_seed(7))
        in_stock = next(i for i in items if i["stock"] >= 2)
        assert client.get(f"/items/{in_stock['sku']}").json() == in_stock
        assert client.get("/items/NOPE").status_code == 404
        order = client.post("/orders", json={"sku": in_stock["sku"], "qty": 2})
        assert order.status_code == 201
        assert order.json()["order"] == {
            "order_id": 1, "sku": in_stock["sku"], "qty": 2, "total_cents": 2 * in_stock["price_cents"],
        }
        too_many = client.post("/orders", json={"sku": in_stock["sku"], "qty": in_stock["stock"]})
        assert too_many.status_code == 409
        assert too_many.json() == {
            "error": "insufficient stock", "sku": in_stock["sku"], "requested": in_stock["stock"],
            "available": in_stock["stock"] - 2,
        }
        assert client.post("/orders", json={"sku": in_stock["sku"], "qty": 0}).status_code == 400
        assert client.post("/orders", json={"sku": in_stock["sku"], "qty": True}).status_code == 400
        assert client.post("/orders", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
        assert client.delete("/orders").status_code == 405
        assert len(client.get("/orders").json()["orders"]) == 1
        state = service.state()
        assert state.items[in_stock["sku"]].stock == in_stock["stock"] - 2
        assert [r.status for r in state.requests][:3] == [200, 200, 404]
        assert client.post("/reset", json={"seed": 8}).json() == {"ok": True, "seed": 8, "items": 8}
        assert service.state().orders == () and service.state().items == catalog_for_seed(8)


def test_inventory_reset_can_be_disabled_and_ports_are_released():
    with InventoryService(seed=1, allow_reset=False) as svc:
        port = svc.port
        assert httpx.post(f"{svc.base_url}/reset", json={"seed": 2}, timeout=5).status_code == 403
        with InventoryService(seed=1) as other:
            assert other.port != port
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/items", timeout=2)
    with pytest.raises(ValueError, match="loopback"):
        InventoryService(host="0.0.0.0")


def test_http_request_against_the_inventory_service(service):
    ctx = ToolContext(allowed_hosts={service.host_port})
    allowed = {"http_request"}
    listing = run(ctx, "http_request", allowed, method="GET", url=f"{service.base_url}/items")
    assert listing.startswith("HTTP 200 OK\ncontent-type: application/json\n\n")
    items = json.loads(listing.split("\n\n", 1)[1])["items"]
    target = next(i for i in items if i["stock"] >= 1)
    placed = run(ctx, "http_request", allowed, method="POST", url=f"{service.base_url}/orders",
                 json={"sku": target["sku"], "qty": 1})
    assert placed.startswith("HTTP 201 Created")
    assert json.loads(placed.split("\n\n", 1)[1])["order"]["sku"] == target["sku"]
    assert service.state().items[target["sku"]].stock == target["stock"] - 1
    conflict = run(ctx, "http_request", allowed, method="POST", url=f"{service.base_url}/orders",
                   json={"sku": target["sku"], "qty": 10_000})
    assert conflict.startswith("HTTP 409 Conflict")
    assert len(service.state().orders) == 1


def test_http_request_refuses_hosts_not_allowed(service):
    ctx = ToolContext(allowed_hosts={service.host_port})
    other_port = _free_port()
    for url in [
        f"http://127.0.0.1:{other_port}/items",
        f"http://localhost:{service.port}/items",
        f"http://{service.host_port}@example.org/items",
        "http://example.org/",
    ]:
        result = run(ctx, "http_request", method="GET", url=url)
        assert result.startswith("error: host ") and f"allowed hosts: {service.host_port}" in result, url
    assert run(ctx, "http_request", method="GET", url="file:///etc/passwd").startswith(
        "error: only http and https URLs are allowed"
    )
    assert "allows no HTTP access" in run(ToolContext(), "http_request", method="GET", url=f"{service.base_url}/items")
    assert service.state().requests == ()


def test_allowed_host_without_port_means_default_port():
    assert check_url_allowed("http://example.org/x", frozenset({"example.org"})).host == "example.org"
    assert check_url_allowed("https://example.org:443/x", frozenset({"example.org"})).host == "example.org"
    assert check_url_allowed("http://example.org:80/x", frozenset({"example.org:80"})).host == "example.org"
    with pytest.raises(ToolError, match="not allowed"):
        check_url_allowed("http://example.org:8080/x", frozenset({"example.org"}))


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/slow":
            time.sleep(3)
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def redirector() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RedirectHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_http_redirects_are_checked_against_allowed_hosts(service, redirector):
    redirect_host = f"127.0.0.1:{redirector.server_address[1]}"
    ctx = ToolContext(allowed_hosts={redirect_host, service.host_port}, http_timeout_s=1)
    _RedirectHandler.target = f"{service.base_url}/items"
    followed = run(ctx, "http_request", method="GET", url=f"http://{redirect_host}/go")
    assert followed.startswith("HTTP 200 OK")
    only_redirector = ToolContext(allowed_hosts={redirect_host}, http_timeout_s=1)
    refused = run(only_redirector, "http_request", method="GET", url=f"http://{redirect_host}/go")
    assert refused.startswith(f"error: host {service.host_port} is not allowed")
    assert len(service.state().requests) == 1  # only the permitted follow-up reached the service
    _RedirectHandler.target = f"http://{redirect_host}/again"
    loop = run(only_redirector, "http_request", method="GET", url=f"http://{redirect_host}/go")
    assert loop.startswith("error: more than 3 redirects")
    slow = run(only_redirector, "http_request", method="GET", url=f"http://{redirect_host}/slow")
    assert slow.startswith("error: the request to") and "timed out after 1 s" in slow


# -- python (local sandbox) ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_sandbox():
    from amrsd_envs.sandbox import make_sandbox

    sandbox = make_sandbox("local")
    yield sandbox
    sandbox.close()


def test_python_tool_runs_code_in_the_sandbox(local_sandbox):
    ctx = ToolContext(sandbox=local_sandbox)
    assert run(ctx, "python", code="print(sum(range(101)))") == "5050"
    failed = run(ctx, "python", code="import sys\nprint('partial')\nraise SystemExit('bad input')")
    assert failed == "partial\n[stderr]\nbad input\n[exit code 1]"
    assert run(ctx, "python", code="x = 1") == "(no output; use print() to see values)"
    # The code does not run in this process: it cannot see this process's state.
    import os

    assert run(ctx, "python", code="import os; print(os.getpid())") != str(os.getpid())


@pytest.mark.timeout(120)
def test_python_tool_timeout_is_the_configured_one(local_sandbox):
    short = ToolContext(sandbox=local_sandbox, python_timeout_s=1.5)
    started = time.monotonic()
    assert run(short, "python", code="while True:\n    pass") == "[timed out after 1.5 s: the program was killed]"
    assert time.monotonic() - started >= 1.5
    # A longer configured timeout lets a 2.5 s program finish: the value reaches the sandbox.
    long = ToolContext(sandbox=local_sandbox, python_timeout_s=8)
    assert run(long, "python", code="import time\ntime.sleep(2.5)\nprint('done')") == "done"
    assert run(short, "python", code="import time\ntime.sleep(2.5)\nprint('done')").startswith("[timed out after 1.5 s")


def test_python_tool_memory_limit_reaches_the_sandbox(local_sandbox):
    code = "x = bytearray(400 * 1024 * 1024)\nprint('allocated')"
    assert run(ToolContext(sandbox=local_sandbox, python_memory_mb=1024), "python", code=code) == "allocated"
    limited = run(ToolContext(sandbox=local_sandbox, python_memory_mb=128), "python", code=code)
    assert "allocated" not in limited and ("MemoryError" in limited or "[exit code" in limited)


def test_python_tool_creates_and_closes_its_own_sandbox():
    ctx = ToolContext(python_timeout_s=5)
    assert run(ctx, "python", code="print('own')") == "own"
    sandbox = ctx._owned_sandbox
    assert sandbox is not None
    ctx.close()
    assert ctx._owned_sandbox is None


def test_python_tool_reports_an_unavailable_sandbox():
    from amrsd_envs.sandbox import SandboxError

    def broken() -> Any:
        raise SandboxError("no isolation available")

    result = run(ToolContext(sandbox_factory=broken), "python", code="print(1)")
    assert result == "error: the python sandbox is unavailable: no isolation available"


# -- session ------------------------------------------------------------------------------------------------


def test_tool_session_builds_the_world_and_cleans_up(local_sandbox):
    task = SimpleNamespace(
        tools=("sql", "http_request", "python"),
        world=SimpleNamespace(
            sqlite=SimpleNamespace(schema_sql=SCHEMA, seed="\n".join(SEED)),
            http=SimpleNamespace(service="inventory", seed="3"),
        ),
    )
    session = ToolSession.for_task(task, sandbox_factory=lambda: local_sandbox)
    world = session.world
    assert world is not None and world.sqlite_path.is_file()
    base_url = world.service.base_url
    sku = next(sku for sku, item in catalog_for_seed("3").items() if item.stock >= 1)
    text = (
        '<tool_call>{"name": "sql", "arguments": {"query": "DELETE FROM accounts WHERE id = 2"}}</tool_call>'
        f'<tool_call>{{"name": "http_request", "arguments": {{"method": "POST", "url": "{base_url}/orders", '
        f'"json": {{"sku": "{sku}", "qty": 1}}}}}}</tool_call>'
        '<tool_call>{"name": "python", "arguments": {"code": "print(6*7)"}}</tool_call>'
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>'
    )
    messages = session.execute(parse_tool_calls(text))
    assert [m["content"].splitlines()[0] for m in messages[:3]] == ["OK, 1 row affected", "HTTP 201 Created", "42"]
    assert "not available in this task" in messages[3]["content"]
    assert [o.sku for o in world.service_state().orders] == [sku]
    session.close()
    assert not world.sqlite_path.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/items", timeout=2)
    with pytest.raises(RuntimeError, match="closed"):
        session.execute(parse_tool_calls(text))
    local_sandbox.run("print(1)")  # a sandbox from the factory belongs to the caller: still usable


def test_tool_session_without_world():
    session = ToolSession.for_task(SimpleNamespace(tools=("calculator",)))
    assert session.world is None
    assert session.execute(parse_tool_calls('<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'))[0]["content"] == "4"
    session.close()
