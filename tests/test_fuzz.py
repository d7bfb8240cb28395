"""Fuzz every registered env with adversarial actions (issue 10, item 4).

The bulk (``test_fuzz_env``, one test per env id) drives each env with a seeded generator: random bytes decoded as
text, random Unicode (lone surrogates, NUL, bidi controls), tag soup (unclosed, nested, stray ``<tool_call>``
tags), unknown tools, arguments of the wrong type, JSON bombs, junk final answers, calculator/units/lookup abuse,
HTTP to hosts that are not allowed (and a loopback listener that must never see a connection), SQL that is refused
(ATTACH, PRAGMA, transactions...), floods of tool calls, non-str actions and actions after the episode ended. A few
hundred expensive actions are mixed in: sandboxed Python (fork bombs, memory bombs, endless loops, output floods,
crashes, attacks on the supervisor), SQL that runs forever (recursive CTEs) and 1 MB strings. In the function-calling
families (``AMRSD-BFCL-v0``, and the ``bfcl.*`` families of ``AMRSD-All-v0``) the actions also target the task's own
functions: declared functions with wrong, missing, extra or hostile arguments, undeclared functions, malformed call
blocks (broken JSON, Python syntax, nested tags), huge arguments (1 MB strings, 100,000-item arrays, 100,000-deep
nesting, 5,000 calls) and the oracle answer, alone and wrapped (it must score 1.0 when sent as is); nothing may be
executed in the single-turn ones (no ``role: tool`` message) and every first message ends the episode there; in
BFCL multi_turn_base the calls run on BFCL's backends.

Checked on every step: only documented exceptions escape (RuntimeError after the episode ended, TypeError for a
non-str action; see ``AMRSDEnv``'s docstring), the 5-tuple is well formed, the observation is inside
``observation_space`` and valid Unicode text, the turn counter matches and the episode ends by ``max_turns``.
Per env: the test process's RSS stays bounded, and after ``close()`` no child process, no listening socket and no
file descriptor the env opened is left, and the temp dirs are gone. Hangs are caught by pytest-timeout; wall time
is recorded in the summary, never asserted.

The summary (actions per kind and env id, what ended each episode) is printed at the end of the module and
written to ``$AMRSD_FUZZ_SUMMARY`` (default: ``<pytest tmp dir>/fuzz/summary.json``). Reproduce the counts in
docs/BENCHMARKS.md ("Fuzzing") with ``.venv/bin/python -m pytest -q tests/test_fuzz.py -s``.
"""

from __future__ import annotations

import collections
import gc
import json
import math
import os
import random
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amrsd_envs
from amrsd_envs.toolcalls import CLOSE_TAG, OPEN_TAG

SEED = 20_251_004
ENV_IDS = list(amrsd_envs.ENV_IDS)

# Actions per env id in the bulk (cheap ones; the expensive plan below comes on top). Math and Science tasks have
# max_turns 1, so nearly every action there costs a reset as well.
# AMRSD_FUZZ_SCALE (default 1) scales them, e.g. 0.1 for a quick local run.
SCALE = float(os.environ.get("AMRSD_FUZZ_SCALE", "1"))
CHEAP_ACTIONS = {"AMRSD-Math-v0": 1800, "AMRSD-Science-v0": 1800, "AMRSD-ToolUse-v0": 2500, "AMRSD-BFCL-v0": 2000,
                 "AMRSD-All-v0": 2300}
CHEAP_ACTIONS = {env_id: max(1, round(n * SCALE)) for env_id, n in CHEAP_ACTIONS.items()}
# Text that reaches the verifiers costs a Math-Verify comparison (tens of ms, 5 s on a pathological answer); in the
# envs whose tasks have no tools (max_turns 1) every action without a tool call is one, so they get fewer of them.
# (bfcl_ast is cheap: no Math-Verify behind AMRSD-BFCL-v0.)
VERIFIED_KIND_WEIGHT = {"AMRSD-Math-v0": 0.35, "AMRSD-Science-v0": 0.35, "AMRSD-ToolUse-v0": 0.5, "AMRSD-BFCL-v0": 1.0,
                        "AMRSD-All-v0": 0.5}
RSS_GROWTH_LIMIT_MB = 400  # generous: 1 MB actions, sympy caches, Math-Verify results; a leak per action is far more
MB = 1 << 20

SUMMARY: dict[str, Any] = {
    "seed": SEED,
    "actions": collections.defaultdict(collections.Counter),  # env id -> kind -> count
    "episodes": collections.defaultdict(collections.Counter),  # env id -> how it ended -> count
    "tool_messages": collections.Counter(),  # env id -> tool messages received
    "max_step_s": collections.defaultdict(float),  # env id -> slowest step (information only)
    "kind_seconds": collections.Counter(),  # kind -> seconds spent in step (information only)
    "seconds": {},
    "rss_growth_mb": {},
}


# ------------------------------------------------------------------------------------------------ process checks
def _proc_stat(pid: str) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    return int(rest[1]), rest[0].decode()


def descendants(root: int | None = None) -> dict[int, str]:
    """pid -> state of every descendant of ``root`` (default: this process), zombies included."""
    root = os.getpid() if root is None else root
    children: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(name)
            if stat is not None:
                children[stat[0]].append((int(name), stat[1]))
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for pid, state in children.get(stack.pop(), ()):
            if pid not in found:
                found[pid] = state
                stack.append(pid)
    return found


def math_worker_pids() -> set[int]:
    """The process-wide Math-Verify workers: shared by every env of the process, so ``env.close()`` keeps them."""
    from amrsd_envs.verifiers import math_pool

    pool = math_pool._pool
    return set(pool.worker_pids()) if pool is not None else set()


def socket_inodes() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def listening_inodes() -> set[str]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A":  # TCP_LISTEN
                out.add(fields[9])
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Leaks:
    """A snapshot of what this process holds; ``check()`` after ``close()`` names whatever was added since."""

    def __init__(self, tmp_root: Path):
        self.tmp_root = tmp_root
        self.children = set(descendants())
        self.listening = socket_inodes() & listening_inodes()
        self.fds = open_fds()

    def check(self) -> None:
        deadline = time.monotonic() + 10  # killed processes need a moment to be reaped
        while True:
            left = {p: s for p, s in descendants().items() if p not in self.children and p not in math_worker_pids()}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not left, f"processes left after close(): {left} (state Z = not reaped)"
        listening = (socket_inodes() & listening_inodes()) - self.listening
        assert not listening, f"listening sockets left after close(): {listening}"
        gc.collect()
        extra_fds = open_fds() - self.fds - 2 * len(math_worker_pids())  # each Math-Verify worker: two pipes
        assert extra_fds <= 0, f"{extra_fds} more open file descriptors than before: {os.listdir('/proc/self/fd')}"
        leftovers = sorted(p.name for p in self.tmp_root.iterdir())
        assert not leftovers, f"temp files/dirs left after close(): {leftovers}"


@pytest.fixture
def private_tmp(tmp_path: Path):
    """Point ``tempfile`` at a private dir so the test sees exactly the temp dirs the env makes."""
    root = tmp_path / "envtmp"
    root.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(tmp_path_factory: pytest.TempPathFactory):
    yield SUMMARY
    report = {
        "seed": SUMMARY["seed"],
        "actions": {env: dict(sorted(c.items())) for env, c in sorted(SUMMARY["actions"].items())},
        "actions_per_env": {env: sum(c.values()) for env, c in sorted(SUMMARY["actions"].items())},
        "actions_per_kind": dict(sorted(sum(SUMMARY["actions"].values(), collections.Counter()).items())),
        "total_actions": sum(sum(c.values()) for c in SUMMARY["actions"].values()),
        "episodes": {env: dict(sorted(c.items())) for env, c in sorted(SUMMARY["episodes"].items())},
        "tool_messages": dict(SUMMARY["tool_messages"]),
        "max_step_s": {k: round(v, 2) for k, v in SUMMARY["max_step_s"].items()},
        "step_seconds_per_kind": {k: round(v, 1) for k, v in sorted(SUMMARY["kind_seconds"].items())},
        "seconds": {k: round(v, 1) for k, v in SUMMARY["seconds"].items()},
        "rss_growth_mb": {k: round(v, 1) for k, v in SUMMARY["rss_growth_mb"].items()},
    }
    path = Path(os.environ.get("AMRSD_FUZZ_SUMMARY") or tmp_path_factory.mktemp("fuzz") / "summary.json")
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print("\n== fuzz summary ==")
    print(f"total actions: {report['total_actions']}  (per env: {report['actions_per_env']})")
    kinds = sorted(report["actions_per_kind"])
    envs = sorted(report["actions"])
    header = "".join(f"{e.removeprefix('AMRSD-')[:-3]:>10}" for e in envs)
    print(f"{'kind':<22}{header}{'total':>8}{'step s':>8}")
    for kind in kinds:
        row = [report["actions"][e].get(kind, 0) for e in envs]
        secs = report["step_seconds_per_kind"].get(kind, 0.0)
        print(f"{kind:<22}" + "".join(f"{n:>10}" for n in row) + f"{sum(row):>8}{secs:>8.1f}")
    print("episodes:")
    for env, ends in report["episodes"].items():
        print(f"  {env}: {ends}")
    print(f"seconds: {report['seconds']}; slowest step: {report['max_step_s']}")
    print(f"RSS growth MB: {report['rss_growth_mb']}")
    print(f"summary written to {path}")


# ------------------------------------------------------------------------------------------------ action builders
def call(name: Any, arguments: Any = None, *, ascii_only: bool = True, **extra: Any) -> str:
    body: dict[str, Any] = {"name": name, **extra}
    if arguments is not None:
        body["arguments"] = arguments
    return f"{OPEN_TAG}\n{json.dumps(body, ensure_ascii=ascii_only)}\n{CLOSE_TAG}"


_RANGES = [(0x00, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0xD800, 0xDFFF), (0x10000, 0x10FFFF), (0x1F300, 0x1FAFF)]
_SPECIALS = "\x00\u202e\u200b\ufeff\ufffd\r\n\t{}\\$<>\"'`"


def random_unicode(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        if rng.random() < 0.1:
            out.append(rng.choice(_SPECIALS))
        else:
            lo, hi = rng.choice(_RANGES)
            out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def random_bytes_text(rng: random.Random, n: int) -> str:
    raw = rng.randbytes(n)
    encoding, errors = rng.choice(_DECODINGS)
    return raw.decode(encoding, errors)


_DECODINGS = [("utf-8", "surrogateescape"), ("utf-8", "replace"), ("utf-8", "ignore"), ("latin-1", "strict"),
              ("utf-16-le", "replace"), ("cp1252", "replace"), ("ascii", "surrogateescape")]  # fmt: skip


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(11 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, -(2**64), 10**30, rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-320, 3.14])
    if kind in (4, 5, 6):
        return random_unicode(rng, rng.randrange(0, 30))
    if kind in (7, 8):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_unicode(rng, rng.randrange(1, 8)): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


TOOL_NAMES = ["python", "calculator", "convert_units", "lookup", "sql", "http_request"]
ARG_NAMES = {
    "python": ["code"],
    "calculator": ["expression"],
    "convert_units": ["value", "from_unit", "to_unit"],
    "lookup": ["table", "key", "field"],
    "sql": ["query"],
    "http_request": ["method", "url", "json"],
}


class Ctx:
    """What an action generator may use: the rng, the episode's tools, and the forbidden listener's port; in a
    function-calling (BFCL) family also the task's own function schemas and its oracle answer."""

    def __init__(self, rng: random.Random, tools: list[str], trap_port: int,
                 schemas: list[dict[str, Any]] | None = None, oracle: str | None = None):
        self.rng, self.tools, self.trap_port = rng, tools, trap_port
        self.schemas, self.oracle = schemas or [], oracle

    def arg_names(self, name: str) -> list[str]:
        """The argument names of a built-in tool, or of one of the task's declared functions."""
        if name in ARG_NAMES:
            return ARG_NAMES[name]
        for schema in self.schemas:
            if schema["function"]["name"] == name:
                return list(schema["function"]["parameters"].get("properties", {})) or ["x"]
        return ["x"]


def a_random_bytes(c: Ctx) -> str:
    return random_bytes_text(c.rng, c.rng.choice([0, 1, 7, 100, 2000]))


def a_random_unicode(c: Ctx) -> str:
    return random_unicode(c.rng, c.rng.choice([1, 5, 40, 300, 3000]))


def a_tag_soup(c: Ctx) -> str:
    rng = c.rng
    pieces = [OPEN_TAG, CLOSE_TAG, "{", "}", '"name"', ":", '"calculator"', '"arguments"', "{}", "[", "]", ",",
              "<tool_call", "tool_call>", "</tool_call", "<<tool_call>>", '{"name": "lookup"', "\n", " ", "null",
              random_unicode(rng, 3)]  # fmt: skip
    shape = rng.randrange(6)
    if shape == 0:  # unclosed final block
        unclosed = '{"name": "calculator", "arguments": {"expression": "1+' + "1" * rng.randrange(5)
        return "thinking... " + OPEN_TAG + unclosed
    if shape == 1:  # nested tags
        inner = call("calculator", {"expression": "2+2"})
        return OPEN_TAG * rng.randrange(1, 4) + inner + CLOSE_TAG * rng.randrange(0, 4)
    if shape == 2:  # a valid call hidden between broken ones
        return OPEN_TAG + "{oops" + CLOSE_TAG + call("calculator", {"expression": "3*3"}) + OPEN_TAG + "[1,2]"
    if shape == 3:  # many tags, no JSON
        return (OPEN_TAG + CLOSE_TAG) * rng.choice([2, 10, 200, 2000])
    if shape == 4:  # a call with a closing tag inside a string argument
        return call("python", {"code": f"print('{CLOSE_TAG}{OPEN_TAG}')"}) + CLOSE_TAG
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 60)))


def a_unknown_tool(c: Ctx) -> str:
    rng = c.rng
    name = rng.choice(["", " ", "Python", "calculator ", "__import__", "os.system", "../../sql", "sq1", "\x00",
                       random_unicode(rng, rng.randrange(1, 20)), "x" * 5000, "calculatorx", "lookup\n"])  # fmt: skip
    return call(name, random_json(rng), ascii_only=rng.random() < 0.5)


def a_wrong_types(c: Ctx) -> str:
    rng = c.rng
    name = rng.choice(c.tools + TOOL_NAMES if c.tools else TOOL_NAMES)
    shape = rng.randrange(7)
    if shape == 0:
        args: Any = {a: random_json(rng) for a in c.arg_names(name)}
    elif shape == 1:
        args = random_json(rng)  # a list, a number, a string ...
    elif shape == 2:
        args = {a: rng.choice([[1], {"a": 1}, None, True, 1.5, 2**70]) for a in c.arg_names(name)}
    elif shape == 3:
        args = json.dumps({a: "x" for a in c.arg_names(name)})  # double-encoded arguments (allowed) ...
        if rng.random() < 0.5:
            args = args[: len(args) // 2]  # ... or double-encoded and broken
    elif shape == 4:
        args = {**{a: "1" for a in c.arg_names(name)}, random_unicode(rng, 4): 1}  # an extra key
    elif shape == 5:
        return OPEN_TAG + json.dumps({"name": name, "arguments": {}, "extra": [1, 2]}) + CLOSE_TAG  # extra top key
    else:
        arguments = '{"' + c.arg_names(name)[0] + '": NaN}'
        return OPEN_TAG + '{"name": ' + json.dumps(name) + ', "arguments": ' + arguments + "}" + CLOSE_TAG
    return call(name, args, ascii_only=rng.random() < 0.7)


def a_json_bomb(c: Ctx) -> str:
    rng = c.rng
    shape = rng.randrange(5)
    if shape == 0:
        depth = rng.choice([100, 1000, 100_000])
        nested = "[" * depth + "]" * depth
        return OPEN_TAG + '{"name": "calculator", "arguments": {"expression": ' + nested + "}}" + CLOSE_TAG
    if shape == 1:
        return OPEN_TAG + '{"name": "calculator", "arguments": {"expression": ' + "9" * 5000 + "}}" + CLOSE_TAG
    if shape == 2:
        duplicate_keys = '{"name": "calculator", "name": "sql", "arguments": {"query": "select 1", "query": 2}}'
        return OPEN_TAG + duplicate_keys + CLOSE_TAG
    if shape == 3:
        return OPEN_TAG + '{"name": "calculator", "arguments": "' + '\\"' * 2000 + '"}' + CLOSE_TAG
    return OPEN_TAG + '{"name": "calculator", "arguments": {"expression": "\\ud800\\udfff\\ud800"}}' + CLOSE_TAG


def a_final_answer(c: Ctx) -> str:
    rng = c.rng
    junk = rng.choice([
        "", " ", "{", "}", "\\boxed{", "\\boxed{}", "\\boxed{\\}", "\\boxed{{{{", "\\boxed{1}}}}", "x=\\frac{1}{0}",
        "\\sqrt{-1}", "\\infty", "NaN", "1e999999", "0/0", "\\frac{}{}",
        "\\begin{matrix}1&2\\\\3&4\\end{matrix}", "((1))", "\\left(", "%%%", "\\x00",
        "1" * 400, "\\{" * 50, "\\boxed{\\boxed{\\boxed{1}}}", "\\fbox{2}", "Answer: " + "9" * 60,
        random_unicode(rng, rng.randrange(1, 50)),
    ])  # fmt: skip
    wrap = rng.randrange(4)
    if wrap == 0:
        return f"So the answer is \\boxed{{{junk}}}."
    if wrap == 1:
        return f"Final answer: {junk}"
    if wrap == 2:
        return junk
    # Unbalanced nesting (no answer is extracted). Balanced deep nesting is in the expensive plan: Math-Verify times
    # out on it.
    return "\\boxed{" + "{" * rng.choice([10, 1000, 20_000]) + "1" + "}" * rng.choice([0, 5])


def a_calculator(c: Ctx) -> str:
    expr = c.rng.choice([
        "9**9**9**9", "factorial(10**6)", "factorial(-1)", "binomial(10**9, 5*10**8)", "(" * 200 + "1" + ")" * 200,
        "1" + "+1" * 400, "__import__('os').system('id')", "().__class__", "exp(10**10)", "sinh(1e5)", "1/0",
        "log(0)", "2**0.5**-9999", "gcd(1)", "lcm()", "sqrt(-1)**1e308", "10**4001", "1e5000", "0**-1", "1 if 1 else 2",
        "[1][0]", "lambda: 1", "x", "1_000", "0x10", "Mod(1, 0)", "root(2, 0)", "atan2(0, 0)", "I**I**I", "",
        "a" * 600, "\x00", random_unicode(c.rng, 20), "pi" * 150, "(1+2j)", "e**e**e**e**e",
    ])  # fmt: skip
    return call("calculator", {"expression": expr})


def a_units(c: Ctx) -> str:
    rng = c.rng
    units = ["m", "degC", "kelvin", "", "1/0", "m**999999", "m**(10**10)", "__class__", "eV*" * 30, "%", "()",
             "delta_degC", "ft*lbf", random_unicode(rng, 6), "meter + second", "m^2^2^2", "1e308 m"]  # fmt: skip
    return call("convert_units", {"value": rng.choice([1, -1e308, 1e308, 0, "1", None, "nan"]),
                                  "from_unit": rng.choice(units), "to_unit": rng.choice(units)})


def a_lookup(c: Ctx) -> str:
    rng = c.rng
    table = rng.choice(["elements", "constants", "facts", "../etc/passwd", "elements.json", ""])
    key = rng.choice(["H", "G", "", " ", "x" * 300, "../../etc/passwd", random_unicode(rng, 10)])
    field = rng.choice([None, "__class__", "name", "", 5, random_unicode(rng, 4)])
    return call("lookup", {"table": table, "key": key, "field": field})


def a_http_disallowed(c: Ctx) -> str:
    rng = c.rng
    port = c.trap_port
    url = rng.choice([
        f"http://127.0.0.1:{port}/", f"http://localhost:{port}/", f"http://[::1]:{port}/", f"http://127.1:{port}/",
        f"http://2130706433:{port}/", f"http://0x7f000001:{port}/", f"http://0177.0.0.1:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/", f"http://0.0.0.0:{port}/", f"http://127.0.0.1.:{port}/",
        f"http://user@127.0.0.1:{port}/", f"http://127.0.0.1:80@127.0.0.1:{port}/", f"HTTP://127.0.0.1:{port}/",
        "http://169.254.169.254/latest/meta-data/", "http://192.0.2.1/", "https://192.0.2.1:443/",
        "file:///etc/passwd", "gopher://127.0.0.1/", "ftp://192.0.2.1/", "//192.0.2.1/", "http://", "http:///x",
        "http://[::1", "http://%31%32%37.0.0.1/", "http://ｌｏｃａｌｈｏｓｔ/", "http://\u0000/", "javascript:alert(1)",
        f"http://127.0.0.1:{port}#@192.0.2.1/", "http://192.0.2.1:99999/", "x" * 2001, "", random_unicode(rng, 30),
    ])  # fmt: skip
    return call("http_request", {"method": rng.choice(["GET", "POST", "PUT", "DELETE", "get", "TRACE", 1]), "url": url,
                                 "json": rng.choice([None, {"a": 1}, [1], "x"])})


def a_http_service(c: Ctx) -> str:
    rng = c.rng
    path = rng.choice(["/items", "/items/", "/items/SKU-1", "/items/%00", "/orders", "/reset", "/../../etc/passwd",
                       "/" + "a" * 1900, "/items/" + random_unicode(rng, 8), "/orders?x=1", "/%", "/\r\nX: y"])
    body = rng.choice([None, {}, {"sku": "SKU-101", "qty": 1}, {"sku": 1, "qty": -1}, {"seed": 3}, {"seed": [1]},
                       {"sku": "x" * 70_000, "qty": 1}, {"qty": 10**30, "sku": "SKU-101"}])  # fmt: skip
    return call("http_request", {"method": rng.choice(["GET", "POST", "PUT", "DELETE"]), "url": path, "json": body})


def a_sql_refused(c: Ctx) -> str:
    query = c.rng.choice([
        "ATTACH DATABASE '/tmp/evil.db' AS evil", "ATTACH ':memory:' AS m", "DETACH main", "VACUUM INTO '/tmp/x.db'",
        "PRAGMA writable_schema = 1", "PRAGMA journal_mode = OFF", "PRAGMA table_info(orders)", "BEGIN", "COMMIT",
        "SAVEPOINT a", "ROLLBACK", "SELECT load_extension('/lib/x.so')", "CREATE VIRTUAL TABLE v USING fts5(x)",
        "SELECT readfile('/etc/passwd')", "SELECT 1; SELECT 2", "DROP TABLE orders", "DELETE FROM orders",
        "SELECT zeroblob(2000000000)", "SELECT printf('%.*c', 2000000000, 'x')", "SELECT CAST(x'ff' AS TEXT)",
        "SELECT '\ud800'", "select * from sqlite_master", "", ";", "SELECT", "-- only a comment",
        "UPDATE products SET price = price * 1e308", "SELECT 1 " + "UNION ALL SELECT 1 " * 600,
    ])  # fmt: skip
    return call("sql", {"query": query})


def a_many_calls(c: Ctx) -> str:
    n = c.rng.choice([5, 50, 3000])
    return "\n".join(call("calculator", {"expression": f"{i}+1"}) for i in range(n))


CHEAP_KINDS: dict[str, tuple[float, Callable[[Ctx], str]]] = {
    "random_bytes": (3, a_random_bytes),
    "random_unicode": (3, a_random_unicode),
    "tag_soup": (3, a_tag_soup),
    "unknown_tool": (2, a_unknown_tool),
    "wrong_types": (3, a_wrong_types),
    "json_bomb": (1, a_json_bomb),
    "final_answer": (1, a_final_answer),
    "calculator": (1.5, a_calculator),
    "units": (1, a_units),
    "lookup": (1, a_lookup),
    "http_disallowed": (1.5, a_http_disallowed),
    "http_service": (1, a_http_service),
    "sql_refused": (1.5, a_sql_refused),
    "many_calls": (0.3, a_many_calls),
}

VERIFIED_KINDS = frozenset({"random_bytes", "random_unicode", "final_answer"})


# -- function calling (AMRSD-BFCL-v0, and the bfcl.* families of AMRSD-All-v0): the task declares its own functions,
# the first message is the answer and nothing is executed. These kinds join the cheap ones in those families only
# (the other envs draw exactly as before).
_HOSTILE_VALUES: list[Any] = [None, True, 0, -1, 2**70, -(2**64), 1e308, -1e-320, "", " ", "\x00", "\u202e", "9" * 400,
                              [], {}, [[[]]], {"": {"": None}}, ["a", 1, None, [2.5]], "' OR 1=1 --", "{{x}}", "%s%n"]


def _declared(c: Ctx) -> dict[str, Any]:
    return c.rng.choice(c.schemas)["function"] if c.schemas else {"name": "f", "parameters": {"properties": {}}}


def _hostile_args(c: Ctx, function: dict[str, Any]) -> dict[str, Any]:
    rng = c.rng
    params = function["parameters"]
    names = list(params.get("properties", {}))
    required = list(params.get("required", []))
    shape = rng.randrange(6)
    if shape == 0:  # every declared parameter, each a hostile value
        return {n: rng.choice(_HOSTILE_VALUES) for n in names}
    if shape == 1:  # required ones missing, others random
        return {n: random_json(rng) for n in names if n not in required}
    if shape == 2:  # parameters the function does not take
        return {**{n: 1 for n in required}, random_unicode(rng, rng.randrange(1, 10)): random_json(rng), "": 1}
    if shape == 3:  # types swapped: strings for numbers, objects for strings, ...
        swap = {"string": 12, "integer": "12", "number": [1.5], "boolean": "true", "array": {"a": 1}, "object": ["x"]}
        return {n: swap.get(d.get("type"), None) for n, d in params.get("properties", {}).items()}
    if shape == 4:  # keys that differ only by case, spaces or Unicode look-alikes
        return {rng.choice([n.upper(), f" {n}", f"{n}\u200b", n.replace("a", "\u0430")]): 1 for n in names or ["x"]}
    return {n: random_json(rng) for n in names}


def a_fc_declared(c: Ctx) -> str:
    """A call to a function the task declares, with wrong, missing, extra or hostile arguments."""
    function = _declared(c)
    return call(function["name"], _hostile_args(c, function), ascii_only=c.rng.random() < 0.7)


def a_fc_undeclared(c: Ctx) -> str:
    """A call to a function the task does not declare: near-miss names, other tasks' tools, injected names."""
    rng = c.rng
    name = _declared(c)["name"]
    undeclared = rng.choice([name + "_v2", name.upper(), name.replace(".", "_"), name.rsplit(".", 1)[-1], f" {name}",
                             f"{name}\n", name[:-1], "python", "calculator", "__import__", "os.system", "eval", "",
                             "x" * 5000, random_unicode(rng, rng.randrange(1, 20))])  # fmt: skip
    return call(undeclared, {"x": 1})


def a_fc_malformed(c: Ctx) -> str:
    """Call blocks that are not calls: broken JSON, wrong shapes, Python syntax, code fences, calls in arguments."""
    rng = c.rng
    function = _declared(c)
    name = json.dumps(function["name"])
    args = json.dumps({n: 1 for n in c.arg_names(function["name"])})
    return rng.choice([
        OPEN_TAG + '{"name": ' + name + ', "arguments": ' + args[:-1] + CLOSE_TAG,  # unterminated
        OPEN_TAG + '{"name": ' + name + ', "arguments": ' + json.dumps(args) + "}" + CLOSE_TAG,  # double-encoded
        OPEN_TAG + '{"name": ' + name + ', "arguments": [1, 2, 3]}' + CLOSE_TAG,
        OPEN_TAG + '{"name": ' + name + ', "arguments": null}' + CLOSE_TAG,
        OPEN_TAG + '{"arguments": ' + args + "}" + CLOSE_TAG,  # no name
        OPEN_TAG + '{"name": ' + rng.choice(["1", "null", "[]", '{"a": 1}', "true"]) + ', "arguments": {}}' + CLOSE_TAG,
        OPEN_TAG + f"{function['name']}(x=1, y='2')" + CLOSE_TAG,  # Python syntax, as BFCL's prompt models write
        f"[{function['name']}(x=1)]",  # BFCL's prompt format, no tags at all
        "```json\n" + json.dumps({"name": function["name"], "arguments": {}}) + "\n```",
        OPEN_TAG + '{"name": ' + name + ', "arguments": {"a": "' + OPEN_TAG + CLOSE_TAG + '"}}' + CLOSE_TAG,
        OPEN_TAG + OPEN_TAG + '{"name": ' + name + ', "arguments": {}}' + CLOSE_TAG + CLOSE_TAG,  # nested tags
        (OPEN_TAG + '{"name": ' + name + ', "arguments": {}}') * 3,  # never closed
        OPEN_TAG + "[" + ", ".join([json.dumps({"name": function["name"], "arguments": {}})] * 3) + "]" + CLOSE_TAG,
        OPEN_TAG + '{"name": ' + name + ', "arguments": {"x": NaN, "y": Infinity, "z": -Infinity}}' + CLOSE_TAG,
    ])  # fmt: skip


def a_fc_huge(c: Ctx) -> str:
    """Declared function, huge arguments: long strings, long arrays, deep nesting, big numbers, many calls."""
    rng = c.rng
    function = _declared(c)
    names = c.arg_names(function["name"])
    shape = rng.randrange(6)
    if shape == 0:
        return call(function["name"], {n: "w" * 100_000 for n in names})
    if shape == 1:
        return call(function["name"], {n: list(range(20_000)) for n in names})
    if shape == 2:
        depth = rng.choice([200, 900, 5000])
        nested = "[" * depth + "]" * depth
        return OPEN_TAG + '{"name": ' + json.dumps(function["name"]) + ', "arguments": {"' + names[0] + '": ' + nested \
            + "}}" + CLOSE_TAG
    if shape == 3:
        return OPEN_TAG + '{"name": ' + json.dumps(function["name"]) + ', "arguments": {"' + names[0] + '": ' \
            + "7" * 5000 + "}}" + CLOSE_TAG  # an int over Python's 4300-digit str->int limit
    if shape == 4:
        return call(function["name"], {n: {str(i): i for i in range(5000)} for n in names})
    return "\n".join(call(function["name"], {n: i for n in names}) for i in range(rng.choice([50, 500])))


def a_fc_oracle(c: Ctx) -> str:
    """The right answer (the verifier's oracle), alone, duplicated, or wrapped in prose and junk."""
    rng = c.rng
    right = c.oracle or "no call"
    return rng.choice([right, right, right + "\n" + right, "Sure! " + right + " Done.", random_unicode(rng, 20) + right,
                       right.replace("\n", " "), right + OPEN_TAG])  # fmt: skip


FC_KINDS: dict[str, tuple[float, Callable[[Ctx], str]]] = {
    "fc_declared": (4, a_fc_declared),
    "fc_undeclared": (2, a_fc_undeclared),
    "fc_malformed": (3, a_fc_malformed),
    "fc_huge": (0.5, a_fc_huge),
    "fc_oracle": (1.5, a_fc_oracle),
}

PY_FOREVER = "while True:\n    pass\n"
PY_FORK_BOMB_FOREVER = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
PY_CASES: dict[str, list[str]] = {
    "python_ok": ["print(6 * 7)", "import sys; print(sys.version_info[:2])", "print('é' * 10)", "x = 1"],
    "python_fork_bomb": [
        "import os\nfor _ in range(100000):\n    os.fork()\n",
        "import threading, time\nts = [threading.Thread(target=time.sleep, args=(0.2,)) for _ in range(100000)]\n"
        "[t.start() for t in ts]\n",
        "import subprocess\nfor _ in range(1000):\n    subprocess.Popen(['sleep', '100'])\n",
    ],
    "python_alloc": [
        "x = [0] * 10**10", "x = bytearray(10**10)", "s = 'x' * 2**40",
        "l = []\nwhile True:\n    l.append(' ' * 10**6)\n", "import numpy\nnumpy.ones(10**11)",
        "open('big', 'wb').write(b'0' * 10**9)",
    ],
    "python_crash": [
        "import ctypes; ctypes.string_at(0)", "import os; os._exit(3)", "raise SystemExit(2)",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "import os; os.kill(os.getppid(), 9)",
        "import os; os.killpg(0, 9)", "import os; os.kill(1, 9)", "import os; os.close(1); os.close(2)",
        "import sys; sys.setrecursionlimit(10**5)\ndef f(): f()\nf()", "import faulthandler; faulthandler._sigsegv()",
    ],
    "python_flood": [
        "print('y' * 10**8)", "import sys\nfor _ in range(10**5):\n    sys.stdout.write('z' * 1000)\n",
        "import sys; sys.stderr.write('e' * 10**7)", "print('\\udc80\\x00' * 1000)",
        "import os; os.write(1, bytes(range(256)) * 1000)",
    ],
    "python_escape": [
        "print(open('/etc/shadow').read())", "import socket; socket.create_connection(('127.0.0.1', 22), 1)",
        "import os; print(os.listdir('/'))", "import os; os.setuid(0)", "print(open('/proc/1/environ').read())",
        "import os; print(os.environ)",
    ],
}
SQL_FOREVER = [
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c ORDER BY 1",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c ORDER BY random() LIMIT 1",
    "WITH RECURSIVE c(x) AS (SELECT randomblob(100) UNION ALL SELECT randomblob(100) FROM c) "
    "SELECT count(DISTINCT x) FROM c",
]


def big_action(rng: random.Random, tools: list[str]) -> str:
    size = 1 << 20
    shape = rng.randrange(6)
    if shape == 0:
        return "a" * size
    if shape == 1:
        return random_unicode(rng, 4096) * (size // 4096)
    if shape == 2:
        return "\\boxed{" + "1" * size + "}"
    if shape == 3:
        arguments = {"code": "#" * size, "query": "x" * size, "expression": "1" * size}
        return call(rng.choice(tools or ["calculator"]), arguments)
    if shape == 4:
        return "Answer: " + " " * size + "x"
    # Many malformed blocks after a long text. (Not 50,000 of them: parse_tool_calls is quadratic in that case, see
    # test_many_malformed_blocks_parse_in_linear_time.)
    return "a" * size + (OPEN_TAG + '{"name": "x"') * 200


# (kind, needed tool, one action) for the expensive part of the plan, spread over the envs that have the tool.
def expensive_plan(rng: random.Random) -> list[tuple[str, str | None, Callable[[Ctx], str]]]:
    plan: list[tuple[str, str | None, Callable[[Ctx], str]]] = []
    for kind, codes in PY_CASES.items():
        repeat = 60 if kind == "python_ok" else 2
        for code in codes * repeat:
            plan.append((kind, "python", lambda c, code=code: call("python", {"code": code})))
    # The endless ones cost a full timeout each (10 s python, 2 s SQL): few of them.
    plan.append(("python_forever", "python", lambda c: call("python", {"code": PY_FOREVER})))
    plan.append(("python_forever", "python", lambda c: call("python", {"code": PY_FORK_BOMB_FOREVER})))
    for query in SQL_FOREVER:
        plan.append(("sql_forever", "sql", lambda c, q=query: call("sql", {"query": q})))
    for _ in range(40):
        plan.append(("sql_ok", "sql", lambda c: call("sql", {"query": c.rng.choice(
            ["SELECT * FROM orders", "SELECT count(*) FROM products", "UPDATE orders SET qty = qty + 1",
             "INSERT INTO customers VALUES (99, 'x', 'y')", "SELECT name, sql FROM sqlite_master"])})))
    for _ in range(24):
        plan.append(("big_1mb", None, lambda c: big_action(c.rng, c.tools)))
    # Answers that make Math-Verify compute for ever: the worker is killed at its timeout (5 s) and replaced.
    for answer in ("\\boxed{10^{10^{10^{10}}}}", "((((((((((((1))))))))))))",  # 12 nested parentheses ...
                   "\\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}"):  # ... or braces: Math-Verify times out on both
        plan.append(("final_answer_bomb", None, lambda c, a=answer: a))
    rng.shuffle(plan)
    return plan


# ------------------------------------------------------------------------------------------------ the driver
def assert_valid_step(env: gym.Env, result: tuple, turn: int, max_turns: int) -> tuple[bool, bool, dict]:
    obs, reward, terminated, truncated, info = result
    assert isinstance(terminated, bool) and isinstance(truncated, bool) and not (terminated and truncated)
    assert isinstance(reward, float) and math.isfinite(reward)
    assert env.observation_space.contains(obs), f"observation outside the space ({len(obs)} messages)"
    for message in obs:
        message["content"].encode("utf-8")  # valid Unicode text: a tokenizer can encode it
        message.get("name", "").encode("utf-8")
    assert info["turn"] == turn <= max_turns
    if turn == max_turns:
        assert terminated or truncated, "the episode must end by max_turns"
    if truncated:
        assert turn == max_turns
    return terminated, truncated, info


def family_tools(env: gym.Env) -> dict[str, list[str]]:
    base = env.unwrapped
    out = {}
    for family in sorted(f.id for f in base.catalog):
        _, info = env.reset(seed=0, options={"family": family})
        out[family] = [t["function"]["name"] for t in info["tools"]]
    return out


def run_bulk(env_id: str, n_cheap: int, plan: list, rng: random.Random, trap_port: int) -> None:
    actions = SUMMARY["actions"][env_id]
    episodes = SUMMARY["episodes"][env_id]
    env = gym.make(env_id)
    try:
        tools_of = family_tools(env)
        families = sorted(tools_of)
        task_pool = {f: [env.reset(seed=s, options={"family": f})[1]["task_id"] for s in range(3)] for f in families}
        kinds = list(CHEAP_KINDS)
        damp = VERIFIED_KIND_WEIGHT.get(env_id, 1.0)
        weights = [CHEAP_KINDS[k][0] * (damp if k in VERIFIED_KINDS else 1.0) for k in kinds]
        fc_kinds = kinds + list(FC_KINDS)  # function-calling families: the cheap kinds and the FC ones
        fc_weights = weights + [w for w, _ in FC_KINDS.values()]
        base = env.unwrapped
        cheap_left = n_cheap
        while cheap_left > 0 or plan:
            # An episode: a family that has the tool the next expensive action needs, else any family.
            pending = plan[-1] if plan else None
            if pending is not None and (pending[1] is None or rng.random() < 0.5):
                wanted = [f for f in families if pending[1] is None or pending[1] in tools_of[f]]
            else:
                pending, wanted = None, families
            family = rng.choice(wanted)
            if rng.random() < 0.1:
                obs, info = env.reset(seed=rng.randrange(2**31), options={"family": family})
            else:
                obs, info = env.reset(options={"task_id": rng.choice(task_pool[family])})
            max_turns = info["max_turns"]
            calling = base.catalog[family].spec.function_calling is not None
            single_turn = calling and max_turns == 1  # BFCL's single-turn categories (bfcl_ast), not multi_turn_*
            if calling:  # the task's own functions, and (single-turn) its right answer
                from amrsd_envs.oracle import oracle_messages

                oracle = oracle_messages(base.catalog.get(info["task_id"]), base.catalog)[-1] if single_turn else None
                ctx = Ctx(rng, [t["function"]["name"] for t in info["tools"]], trap_port, info["tools"], oracle)
            else:
                ctx = Ctx(rng, tools_of[family], trap_port)
            turn, done = 0, False
            while not done:
                if pending is not None:
                    plan.pop()
                    kind, _, make = pending
                    pending = None
                else:
                    kind = rng.choices(fc_kinds, fc_weights)[0] if calling else rng.choices(kinds, weights)[0]
                    make = FC_KINDS[kind][1] if kind in FC_KINDS else CHEAP_KINDS[kind][1]
                    cheap_left -= 1
                action = make(ctx)
                turn += 1
                started = time.monotonic()
                result = env.step(action)
                elapsed = time.monotonic() - started
                SUMMARY["max_step_s"][env_id] = max(SUMMARY["max_step_s"][env_id], elapsed)
                SUMMARY["kind_seconds"][kind] += elapsed
                actions[kind] += 1
                terminated, truncated, info = assert_valid_step(env, result, turn, max_turns)
                SUMMARY["tool_messages"][env_id] += info["tool_calls"]
                done = terminated or truncated
                if single_turn:  # nothing is executed, and the first message is the answer
                    assert info["tool_calls"] == 0 and not any(m["role"] == "tool" for m in result[0])
                    assert terminated and not truncated
                    if kind == "fc_oracle" and action == ctx.oracle:
                        assert info["correct"] and result[1] == 1.0, f"the oracle answer failed: {info['task_id']}"
                if done:
                    if truncated:
                        episodes["truncated (max_turns)"] += 1
                    elif info["verification"].extracted is None:
                        episodes["terminated: no answer"] += 1
                    else:
                        episodes[f"terminated: {'correct' if info['correct'] else 'wrong'} answer"] += 1
            # Actions after the episode ended, and actions that are not text: documented errors, state unchanged.
            if rng.random() < 0.15:
                with pytest.raises(RuntimeError, match="reset"):
                    env.step(a_random_unicode(ctx))
                actions["after_end"] += 1
            if rng.random() < 0.03:
                obs, info = env.reset(options={"task_id": rng.choice(task_pool[family])})
                bad = rng.choice([None, b"\\boxed{1}", 42, ["hi"], {"role": "assistant"}])
                with pytest.raises(TypeError, match="str"):
                    env.step(bad)
                actions["non_str"] += 1
                assert assert_valid_step(env, env.step("\\boxed{1}"), 1, info["max_turns"])  # the episode goes on
    finally:
        env.close()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("after close")  # close() ends the episode


@pytest.fixture(scope="module")
def trap_listener():
    """A loopback listener no request may reach: the http tool must refuse every spelling of its address."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    hits: list[Any] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, addr = server.accept()
            except OSError:
                continue
            hits.append(addr)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], hits
    stop.set()
    thread.join()
    server.close()


def bfcl_plan(rng: random.Random) -> list[tuple[str, str | None, Callable[[Ctx], str]]]:
    """AMRSD-BFCL-v0's expensive actions: 1 MB strings, and 1 MB arguments to the task's declared functions (one
    string, a 100,000-item array, 5,000 calls, 100,000-deep nesting)."""
    plan: list[tuple[str, str | None, Callable[[Ctx], str]]] = []
    for _ in range(6):
        plan.append(("big_1mb", None, lambda c: big_action(c.rng, c.tools)))

    def first(c: Ctx) -> tuple[str, str]:
        function = _declared(c)
        return function["name"], c.arg_names(function["name"])[0]

    def big_string(c: Ctx) -> str:
        name, arg = first(c)
        return call(name, {arg: "s" * (1 << 20)})

    def big_array(c: Ctx) -> str:
        name, arg = first(c)
        return call(name, {arg: [1.5] * 100_000})

    def many_calls(c: Ctx) -> str:
        name, arg = first(c)
        return "\n".join(call(name, {arg: i}) for i in range(5000))

    def deep(c: Ctx) -> str:
        name, arg = first(c)
        return OPEN_TAG + '{"name": ' + json.dumps(name) + ', "arguments": {"' + arg + '": ' + "[" * 100_000 \
            + "]" * 100_000 + "}}" + CLOSE_TAG

    for make in (big_string, big_array, many_calls, deep):
        plan += [("fc_huge_1mb", None, make)] * 3
    rng.shuffle(plan)
    return plan


def _plans() -> dict[str, list]:
    """The expensive actions, split between the envs that have python and SQL tasks (ToolUse and All); BFCL gets
    its own (it has neither)."""
    plan = expensive_plan(random.Random(SEED))
    anywhere = [p for p in plan if p[1] is None]  # 1 MB strings and answer bombs: any env
    needs_tool = [p for p in plan if p[1] is not None]  # python and SQL: ToolUse and All
    return {
        "AMRSD-Math-v0": anywhere[0::4],
        "AMRSD-Science-v0": anywhere[1::4],
        "AMRSD-ToolUse-v0": needs_tool[0::2] + anywhere[2::4],
        "AMRSD-BFCL-v0": bfcl_plan(random.Random(SEED)),
        "AMRSD-All-v0": needs_tool[1::2] + anywhere[3::4],
    }


PLANS = _plans()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_fuzz_env(env_id: str, private_tmp: Path, trap_listener) -> None:
    trap_port, hits = trap_listener
    rng = random.Random(f"{SEED}:{env_id}")
    warm = gym.make(env_id)  # imports, catalogs, the Math-Verify pool: the baseline is taken after them
    warm.reset(seed=0)
    warm.step("\\boxed{x+1}")
    warm.close()
    leaks = Leaks(private_tmp)
    rss_before = rss_mb()
    started = time.monotonic()
    plan = list(PLANS[env_id])
    run_bulk(env_id, CHEAP_ACTIONS[env_id], plan, rng, trap_port)
    SUMMARY["seconds"][env_id] = time.monotonic() - started
    gc.collect()
    growth = rss_mb() - rss_before
    SUMMARY["rss_growth_mb"][env_id] = growth
    assert not plan
    assert not hits, f"a request reached the forbidden listener: {hits}"
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew by {growth:.0f} MB"
    leaks.check()


def test_bfcl_multi_turn_call_flood_is_bounded() -> None:
    """Messages of many calls, every turn until truncation, never grow the transcript past the observation space:
    the multi-turn world runs at most CALLS_PER_MESSAGE calls a message and TOOL_MESSAGES_PER_EPISODE in all."""
    from amrsd_envs.bfcl_multi_turn import CALLS_PER_MESSAGE

    env = gym.make("AMRSD-BFCL-v0", families=["bfcl.multi_turn_base"])
    try:
        _, info = env.reset(seed=0)
        name = info["tools"][0]["function"]["name"]
        flood = "\n".join(call(name, {}) for _ in range(1000)) + "\n<tool_call>{broken</tool_call>"
        before = 2
        for _ in range(info["max_turns"]):
            obs, _, terminated, truncated, _ = env.step(flood)
            assert env.observation_space.contains(obs), f"{len(obs)} messages"
            assert len(obs) - before <= CALLS_PER_MESSAGE + 2  # the message, its calls, one notice
            before = len(obs)
            if terminated or truncated:
                break
        assert truncated
    finally:
        env.close()


# ------------------------------------------------------------------------------------------------ hypothesis
@pytest.fixture(scope="module")
def all_env():
    env = gym.make("AMRSD-All-v0")
    tools_of = family_tools(env)
    yield env, tools_of
    env.close()


def _drive(env: gym.Env, family: str, actions: list[str], kind: str) -> None:
    obs, info = env.reset(seed=0, options={"family": family})
    for turn, action in enumerate(actions, start=1):
        terminated, truncated, _ = assert_valid_step(env, env.step(action), turn, info["max_turns"])
        SUMMARY["actions"]["AMRSD-All-v0"][kind] += 1
        if terminated or truncated:
            with pytest.raises(RuntimeError):
                env.step(action)
            return


SLOW_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.timeout(300)
@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=SLOW_OK)
@given(text=st.text(max_size=400), family_index=st.integers(0, 200))
def test_hypothesis_text_actions(all_env, text: str, family_index: int) -> None:
    env, tools_of = all_env
    families = sorted(f for f, tools in tools_of.items() if "python" not in tools)
    _drive(env, families[family_index % len(families)], [text, text + "\\boxed{0}"], "hypothesis_text")


@pytest.mark.timeout(300)
@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=SLOW_OK)
@given(
    name=st.sampled_from([t for t in TOOL_NAMES if t != "python"]) | st.text(max_size=12),
    arguments=st.dictionaries(st.sampled_from(sorted({a for v in ARG_NAMES.values() for a in v})) | st.text(max_size=6),
                              _json_values, max_size=4) | _json_values,
    family_index=st.integers(0, 200),
)
def test_hypothesis_tool_calls(all_env, name: str, arguments: Any, family_index: int) -> None:
    env, tools_of = all_env
    families = sorted(f for f, tools in tools_of.items() if tools and "python" not in tools)
    _drive(env, families[family_index % len(families)], [call(name, arguments), "done"], "hypothesis_tool_call")


# ------------------------------------------------------------------------------------------------ regressions
# Each bug the fuzzer found, pinned by a small test (the bulk above found them; these keep them fixed).
from amrsd_envs.tools import LIMIT_NOTICE_TOOL_NAME, PARSE_ERROR_TOOL_NAME, ToolContext  # noqa: E402
from amrsd_envs.tools.executor import execute_tool_calls  # noqa: E402
from amrsd_envs.toolcalls import parse_tool_calls  # noqa: E402


@pytest.fixture(scope="module")
def tooluse_env():
    env = gym.make("AMRSD-ToolUse-v0")
    yield env
    env.close()


def test_tool_messages_of_one_turn_are_bounded(tooluse_env) -> None:
    """Bug: one message of N ``<tool_call>`` blocks got N tool messages (a 1 MB action: 52,428 of them), so the
    observation left ``observation_space`` (256 messages) and the transcript grew without bound."""
    env = tooluse_env
    env.reset(seed=0, options={"family": "tooluse.calc_arith"})
    calls = "\n".join(call("calculator", {"expression": f"{i}+1"}) for i in range(3000))
    action = calls + (OPEN_TAG + "{bad" + CLOSE_TAG) * 3000
    obs, _, _, _, info = env.step(action)
    assert env.observation_space.contains(obs)
    tool_messages = [m for m in obs if m["role"] == "tool"]
    assert info["tool_calls"] == len(tool_messages) == 12
    assert [m["content"] for m in tool_messages[:4]] == ["1", "2", "3", "4"]
    assert tool_messages[4]["content"].startswith("error: not run: at most 4 tool calls are run per message")
    assert tool_messages[-1]["name"] == LIMIT_NOTICE_TOOL_NAME
    # the parser reports the first 64 malformed blocks one by one and the rest in one error (toolcalls.py)
    assert "2989 more tool call(s) and 65 more malformed <tool_call> block(s)" in tool_messages[-1]["content"]
    # Below the cap nothing changes: one message per call, then one per parse error.
    parsed = parse_tool_calls(call("calculator", {"expression": "1"}) * 2 + OPEN_TAG + "{" + CLOSE_TAG)
    messages = execute_tool_calls(parsed.calls, parsed.errors, ToolContext(), {"calculator"})
    assert [m["name"] for m in messages] == ["calculator", "calculator", PARSE_ERROR_TOOL_NAME]


def test_lone_surrogates_never_reach_the_transcript(tooluse_env) -> None:
    """Bug: a lone surrogate (bytes decoded with surrogateescape, or a JSON escape such as \\ud800 in a call's
    arguments or name) went into the observation as is; no tokenizer can encode it, a PeerBuffer with a file raised
    UnicodeEncodeError out of step(), and the sql tool reported an internal failure."""
    env = tooluse_env
    env.reset(seed=0, options={"family": "tooluse.sql_query"})
    obs, *_ = env.step(b"\xff\xfe".decode("utf-8", "surrogateescape") + call("sql", {"query": "SELECT '\ud800'"})
                       + call("\udc80tool", {}))
    for message in obs:
        message["content"].encode("utf-8")
        message.get("name", "").encode("utf-8")
    assert obs[2]["content"].startswith("\ufffd\ufffd<tool_call>")
    assert obs[3]["content"].startswith("error: invalid arguments for 'sql'")  # pydantic refuses such a str
    assert obs[4]["name"] == "\ufffdtool"
    import sqlite3

    from amrsd_envs.tools.base import ToolError
    from amrsd_envs.tools.sql import run_sql

    with pytest.raises(ToolError, match="not valid Unicode text"):  # called directly, without pydantic
        run_sql(sqlite3.connect(":memory:"), "SELECT '\ud800'", timeout_s=1, max_rows=1)


def test_step_after_close_raises_and_starts_nothing(private_tmp: Path) -> None:
    """Bug: close() during an episode left it running; a step after close() made a new world (SQLite file, HTTP
    service) or sandbox that nobody closed. Now it raises RuntimeError like any step without an episode."""
    leaks = Leaks(private_tmp)
    env = gym.make("AMRSD-ToolUse-v0")
    env.reset(seed=0, options={"family": "tooluse.http_query"})
    env.step(call("http_request", {"method": "GET", "url": "/items"}))
    env.close()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(call("http_request", {"method": "GET", "url": "/items"}))
    leaks.check()
    env.reset(seed=0, options={"family": "tooluse.sql_query"})  # reset after close() starts afresh ...
    env.step(call("sql", {"query": "SELECT 1"}))
    env.close()  # ... and close() frees it again
    leaks.check()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # One printf call looped two billion times (48 s here) inside a single SQLite instruction, where the
        # progress handler cannot interrupt it.
        ("SELECT printf('%.*c', 2000000000, 'x')", "refused: printf/format width and precision"),
        ("SELECT format('%2000000000d', 1)", "refused: printf/format width and precision"),
        # A LIKE of a 1 MB value against a 48 kB pattern took 187 s; instr() 12 s: values and patterns are smaller.
        ("SELECT hex(zeroblob(499000)) LIKE '%' || hex(zeroblob(24000)) || 'y%'", "string or blob too big"),
        ("SELECT hex(zeroblob(9000)) LIKE '%' || hex(zeroblob(240)) || 'y%'", "LIKE or GLOB pattern too complex"),
        # Many bounded calls in one statement: the handler runs often enough to stop it soon after its deadline.
        ("SELECT " + " + ".join(["instr(hex(zeroblob(9999)), hex(zeroblob(5000)) || 'y')"] * 300), None),
        ("SELECT printf('%.2f|%5d|%-4s|%%', 3.14159, 42, 'ab')", "3.14\\|   42\\|ab  \\|%"),
    ],
)
def test_one_sql_statement_cannot_stall_the_process(tmp_path: Path, query: str, expected: str | None) -> None:
    from amrsd_envs.tools.sql import create_sqlite_world, run_sql
    from amrsd_envs.tools.base import ToolError
    import sqlite3

    conn = sqlite3.connect(create_sqlite_world("CREATE TABLE t (x);", "", tmp_path / "w.db"), isolation_level=None)
    try:
        result = run_sql(conn, query, timeout_s=1.0, max_rows=5)
    except ToolError as exc:
        result = str(exc)
    finally:
        conn.close()
    if expected is None:  # interrupted, or finished: either way within the pytest timeout
        assert result.startswith(("the statement was interrupted", "instr(")) or result.splitlines()[2] == "0"
    else:
        assert expected in result


def test_many_malformed_blocks_parse_in_linear_time() -> None:
    """A hang detector, not a timing: linear parsing takes well under a second here; the bug takes minutes."""
    import subprocess
    import sys

    code = (
        "from amrsd_envs.toolcalls import OPEN_TAG, parse_tool_calls\n"
        "parsed = parse_tool_calls((OPEN_TAG + '{') * ((1 << 20) // 12))\n"
        "assert parsed.errors and not parsed.calls\n"
    )
    try:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("parse_tool_calls did not finish within 10 s on 1 MB of unclosed '<tool_call>{' blocks")
