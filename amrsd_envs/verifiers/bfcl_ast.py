"""``bfcl_ast``: the Berkeley Function Calling Leaderboard's AST match, on the calls of one assistant message.

BFCL (v4) grades a single-turn function-calling answer by matching the decoded calls against a list of possible
answers, parameter by parameter. This module implements those rules in the project's own code (the reference is
``bfcl_eval/eval_checker/ast_eval/ast_checker.py``; ``bench/bfcl_agreement.py`` measures agreement with it):

* **Gold** (the task's ``answer``, JSON): ``{"match": "one" | "parallel" | "none", "functions": [BFCL function
  docs, with BFCL's types], "ground_truth": [{name: {param: [allowed values]}}]}``. ``one``: exactly one call,
  checked against the single expected call (BFCL's simple and multiple categories); ``parallel``: as many calls as
  expected calls, matched in any order (parallel, parallel_multiple); ``none``: the right answer is no call at all
  (irrelevance).
* **A call** must name the expected function, pass every ``required`` parameter, and no parameter that the function
  does not take or the possible answer does not list. A listed parameter may be left out only when ``""`` is among
  its allowed values.
* **Types** follow BFCL's Python mapping (``string``/``any`` -> str, ``integer`` -> int, ``float`` -> float,
  ``boolean`` -> bool, ``array``/``tuple`` -> list, ``dict`` -> dict), compared exactly (``True`` is not an
  integer); an int is accepted for a float. Arrays check their items one level deep against the item type. Where
  the allowed values are of another type than the schema says (BFCL writes a variable name as a string), a value of
  the allowed values' type is accepted and compared as is.
* **Values**: strings are compared after BFCL's normalisation (:func:`standardize`: drop spaces and ``,./-_*^``,
  lowercase, ``'`` -> ``"``), lists element-wise with their string elements normalised, dicts key by key (every key
  in the allowed dict, each value among its allowed values, missing keys allowed when ``""`` is allowed), lists of
  dicts dict by dict in order; anything else must equal one allowed value.
* **Parallel** calls are matched greedily in the order of the expected calls, each taking the first unmatched call
  that fits (BFCL's order-free matcher).

Calls are read from the response in the Hermes/Qwen ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
format (:func:`amrsd_envs.toolcalls.parse_tool_calls`). Where this differs from BFCL's pipeline it is on purpose and
documented in ``docs/BENCHMARKS.md`` ("BFCL checker agreement"): a malformed call makes the answer wrong (BFCL's Qwen
decoder skips it), and the tags need not sit on lines of their own.

Feedback says which rule failed, naming only what the function schemas already show (function and parameter names,
schema types), never an allowed value: it is shown to the model in retry mode and used for reflection.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from amrsd_envs.verifiers.base import BuiltinVerifier, Verification, VerifierOptions

PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
"""BFCL's Python type of each schema type (``any`` is checked as a string, as BFCL does)."""

NESTED_TYPES = ("array", "tuple")
"""Schema types whose items are type-checked too (one level deep)."""

MatchMode = Literal["one", "parallel", "none"]
_STANDARDIZE = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class Mismatch:
    """Why a call (or the set of calls) does not match. ``kind`` names the rule (``wrong_function``,
    ``missing_required``, ``unexpected_param``, ``wrong_type``, ``wrong_value``, ``missing_param``, ``wrong_count``,
    ``no_match``, ``unexpected_call``, ``no_call``, ``malformed_call``); ``feedback`` is safe to show the model."""

    kind: str
    feedback: str


class BfclAstOptions(VerifierOptions):
    """``bfcl_ast`` takes no options today; the gold says how to match."""

    language: Literal["python"] = Field("python", description="BFCL test language; only Python is supported.")


# -- the gold -----------------------------------------------------------------------------------------------------


def match_mode(category: str) -> MatchMode:
    """How BFCL matches a category's answers: ``none`` for irrelevance, ``parallel`` for any parallel category
    (BFCL tests the name with ``"parallel" in category``), else ``one``."""
    if "irrelevance" in category:
        return "none"
    return "parallel" if "parallel" in category else "one"


def make_gold(category: str, functions: list[dict[str, Any]], ground_truth: list[dict[str, Any]]) -> str:
    """The gold string of one BFCL task (see the module docstring)."""
    return json.dumps({"match": match_mode(category), "functions": functions, "ground_truth": ground_truth})


def parse_gold(gold: str) -> dict[str, Any]:
    """The gold as a dict; ValueError (a task-spec error) when it is not a ``bfcl_ast`` gold."""
    try:
        data = json.loads(gold)
    except ValueError as exc:
        raise ValueError(f"bfcl_ast: the gold is not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("match") not in ("one", "parallel", "none"):
        raise ValueError("bfcl_ast: the gold needs 'match' (one|parallel|none), 'functions' and 'ground_truth'")
    return data


# -- values -------------------------------------------------------------------------------------------------------


def standardize(text: str) -> str:
    """BFCL's string normalisation: no spaces or ``,./-_*^``, lowercase, single quotes as double quotes."""
    return _STANDARDIZE.sub("", text).lower().replace("'", '"')


def _std(value: Any) -> Any:
    return standardize(value) if type(value) is str else value


def _std_items(candidate: Any) -> list[Any]:
    """A candidate list with its string items normalised (BFCL reads ``""`` as the empty list here)."""
    try:
        return [_std(candidate[i]) for i in range(len(candidate))]
    except TypeError:
        return []


def allowed_type(allowed: list[Any]) -> type | None:
    """The type of the first allowed value that is not ``""`` (the omission marker), or None."""
    for value in allowed:
        if value != "":
            return type(value)
    return None


def type_matches(value: Any, allowed: list[Any], expected: type, item_type: type | None) -> tuple[bool, bool]:
    """``(ok, is_variable)``: whether ``value`` has the schema's type (items too, for arrays), and whether the
    allowed values are of another type than the schema's (BFCL's "variable" case, compared as is)."""
    given = allowed_type(allowed)
    is_variable = given is not None and given is not expected
    if type(value) is expected:
        if item_type is None:
            return True, is_variable
        for candidate in allowed:  # the items must fit the item type against at least one allowed list
            if type(candidate) is not list or all(type_matches(v, candidate, item_type, None)[0] for v in value):
                return True, is_variable
        return False, is_variable
    if given is not None and type(value) is given:
        return True, True
    return False, is_variable


def string_matches(value: str, allowed: list[Any]) -> bool:
    return standardize(value) in [standardize(a) for a in allowed if type(a) is str]


def list_matches(value: list[Any], allowed: list[Any]) -> bool:
    return [_std(v) for v in value] in [_std_items(a) for a in allowed]


def dict_matches(value: Any, allowed: list[Any]) -> bool:
    """Some allowed dict (``""`` entries skipped) holds every key of ``value`` with an allowed value, and ``value``
    has each of its keys that cannot be left out."""
    if not isinstance(value, dict):
        return False
    for candidate in allowed:
        if candidate == "" or not isinstance(candidate, dict):
            continue
        keys_ok = all(key in candidate and _std(v) in _std_items(candidate[key]) for key, v in value.items())
        if keys_ok and all(key in value or "" in options for key, options in candidate.items()):
            return True
    return False


def dict_list_matches(value: list[Any], allowed: list[Any]) -> bool:
    """Some allowed list of dicts has as many dicts as ``value`` and matches it dict by dict, in order."""
    for candidate in allowed:
        try:
            size = len(candidate)
        except TypeError:
            continue
        if size == len(value) and all(dict_matches(v, [candidate[i]]) for i, v in enumerate(value)):
            return True
    return False


# -- one call -----------------------------------------------------------------------------------------------------


def _schema_type(details: dict[str, Any], name: str) -> str:
    kind = details.get("type")
    if kind not in PYTHON_TYPES:
        raise ValueError(f"bfcl_ast: parameter {name!r} has type {kind!r}, not one of {sorted(PYTHON_TYPES)}")
    return kind


def check_call(function: dict[str, Any], name: str, arguments: dict[str, Any],
               allowed: dict[str, list[Any]]) -> Mismatch | None:
    """None when the call ``name(**arguments)`` is one of the possible answers ``allowed`` (parameter -> allowed
    values) for ``function`` (its BFCL doc); else the first rule it breaks."""
    fname = function["name"]
    if name != fname:
        return Mismatch("wrong_function", f"`{name}` is not the function to call here")
    params = function["parameters"]
    properties: dict[str, Any] = params.get("properties", {})
    for param in params.get("required", []):
        if param not in arguments:
            return Mismatch("missing_required", f"the call of `{fname}` lacks its required argument '{param}'")
    for param, value in arguments.items():
        if param not in properties:
            return Mismatch("unexpected_param", f"`{fname}` takes no argument '{param}'")
        if param not in allowed:
            return Mismatch("unexpected_param", f"argument '{param}' of `{fname}` is not wanted for this request")
        kind = _schema_type(properties[param], param)
        expected = PYTHON_TYPES[kind]
        item_type = PYTHON_TYPES[_schema_type(properties[param]["items"], param)] if kind in NESTED_TYPES else None
        if kind == "float" and type(value) is int:
            value = float(value)
        ok, is_variable = type_matches(value, allowed[param], expected, item_type)
        if not ok:
            return Mismatch("wrong_type", f"argument '{param}' of `{fname}` should be of type {kind}, "
                                          f"got {_json_type(value)}")
        if is_variable:
            matched = value in allowed[param]
        elif expected is dict:
            matched = dict_matches(value, allowed[param])
        elif expected is list and item_type is dict:
            matched = dict_list_matches(value, allowed[param])
        elif expected is str:
            matched = string_matches(value, allowed[param])
        elif expected is list:
            matched = list_matches(value, allowed[param])
        else:
            matched = value in allowed[param]
        if not matched:
            return Mismatch("wrong_value", f"argument '{param}' of `{fname}` has a wrong value")
    for param, values in allowed.items():
        if param not in arguments and "" not in values:
            return Mismatch("missing_param", f"the call of `{fname}` leaves out argument '{param}', "
                                             "which this request needs")
    return None


def _json_type(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "dict"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


# -- all calls ----------------------------------------------------------------------------------------------------


def find_function(functions: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for function in functions:
        if function["name"] == name:
            return function
    raise ValueError(f"bfcl_ast: the ground truth calls {name!r}, which the task's functions do not define")


def match_calls(gold: dict[str, Any], calls: list[tuple[str, dict[str, Any]]]) -> Mismatch | None:
    """None when ``calls`` (name, arguments) answer the task ``gold`` (parsed); else why not."""
    functions, expected = gold["functions"], gold["ground_truth"]
    mode = gold["match"]
    if mode == "none":
        return Mismatch("unexpected_call", "none of the given functions fits this request: answer without calling "
                                           "one") if calls else None
    if not calls:
        return Mismatch("no_call", "no function call found: answer with <tool_call> blocks")
    if len(calls) != len(expected):
        few = len(calls) < len(expected)
        return Mismatch("wrong_count", f"too {'few' if few else 'many'} function calls for this request")
    if mode == "one":
        ((name, allowed),) = expected[0].items()
        return check_call(find_function(functions, name), *calls[0], allowed)
    return _match_parallel(functions, expected, calls)


def _match_parallel(functions: list[dict[str, Any]], expected: list[dict[str, Any]],
                    calls: list[tuple[str, dict[str, Any]]]) -> Mismatch | None:
    """Greedy order-free matching, as BFCL's: each expected call, in order, takes the first unmatched call that
    fits."""
    matched: set[int] = set()
    for want in expected:
        ((fname, allowed),) = want.items()
        function = find_function(functions, fname)
        free = [i for i in range(len(calls)) if i not in matched]
        hit = next((i for i in free if check_call(function, *calls[i], allowed) is None), None)
        if hit is None:
            same_name = [i for i in free if calls[i][0] == fname]
            if not same_name:
                return Mismatch("no_match", f"a needed call of `{fname}` is missing")
            reason = check_call(function, *calls[same_name[0]], allowed)
            assert reason is not None
            return Mismatch("no_match", reason.feedback)
        matched.add(hit)
    return None


def unsatisfiable(functions: list[dict[str, Any]], ground_truth: list[dict[str, Any]]) -> str | None:
    """Why no answer can match this ground truth (BFCL's own checker included), or None. It happens in BFCL's data:
    a required parameter the possible answer does not list (passing it is unexpected, leaving it out is missing),
    a listed parameter the function does not take and that may not be left out, or one with no allowed value."""
    for want in ground_truth:
        ((fname, allowed),) = want.items()
        params = find_function(functions, fname)["parameters"]
        for param in params.get("required", []):
            if param not in allowed:
                return f"`{fname}` requires '{param}', which the possible answer does not list"
        for param, values in allowed.items():
            if not values:
                return f"the possible answer allows no value of '{param}'"
            if param not in params.get("properties", {}) and "" not in values:
                return f"the possible answer needs '{param}', which `{fname}` does not take"
    return None


# -- the verifier -------------------------------------------------------------------------------------------------


def reference_calls(gold: str) -> list[tuple[str, dict[str, Any]]]:
    """A perfect answer's calls: each parameter with its first allowed value, left out when that is ``""`` or the
    function does not take it (a required one takes its first other value). A dict value is built the same way from
    its allowed dict (key -> allowed values), and so is each dict of a list of dicts. Empty for ``match: none``."""
    data = parse_gold(gold)
    if data["match"] == "none":
        return []
    calls = []
    for want in data["ground_truth"]:
        ((fname, allowed),) = want.items()
        params = find_function(data["functions"], fname)["parameters"]
        calls.append((fname, _first_values(allowed, params.get("properties", {}), params.get("required", []))))
    return calls


def _first_values(allowed: dict[str, list[Any]], properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    out = {}
    for param, values in allowed.items():
        if param not in properties:
            continue
        usable = [v for v in values if v != ""] if param in required else values
        if usable and usable[0] != "":
            out[param] = _first_value(usable[0], properties[param])
        elif param in required:
            out[param] = ""  # required, and "" is its only allowed value: the empty string matches it
    return out


def _first_value(value: Any, schema: dict[str, Any]) -> Any:
    """An allowed value as a call passes it: an allowed dict (key -> allowed values) becomes one dict."""
    kind = schema.get("type")
    if kind == "dict" and isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
        return _first_values(value, {k: schema.get("properties", {}).get(k, {}) for k in value}, list(value))
    items = schema.get("items", {})
    if kind in NESTED_TYPES and items.get("type") == "dict" and isinstance(value, list):
        return [_first_value(v, items) for v in value]
    return value


class BfclAstVerifier(BuiltinVerifier):
    """BFCL's AST match of the response's tool calls against the possible answers (module docstring)."""

    name = "bfcl_ast"
    options_model = BfclAstOptions

    def check(self, gold: str, response: str, options: BfclAstOptions) -> Verification:
        from amrsd_envs.toolcalls import parse_tool_calls

        data = parse_gold(gold)
        parsed = parse_tool_calls(response)
        calls = [(c.name, c.arguments) for c in parsed.calls]
        extracted = json.dumps([{name: args} for name, args in calls], ensure_ascii=False)
        if parsed.errors:
            return Verification.wrong(extracted, "a tool call could not be parsed: write each call as <tool_call>"
                                                 '{"name": ..., "arguments": {...}}</tool_call>')
        mismatch = match_calls(data, calls)
        if mismatch is None:
            return Verification.right(extracted)
        return Verification.wrong(None if mismatch.kind == "no_call" else extracted, mismatch.feedback)

    def oracle_response(self, gold: str) -> str:
        """What a perfect agent sends: the reference calls in the Hermes format, or a refusal for ``match: none``."""
        from amrsd_envs.toolcalls import ToolCall, render_tool_calls

        calls = reference_calls(gold)
        if not calls:
            return "None of the given functions can do this, so I will not call any of them."
        return render_tool_calls([ToolCall(name=n, arguments=a) for n, a in calls])
