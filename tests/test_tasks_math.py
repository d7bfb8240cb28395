"""The built-in math suite, ``tasks/math/*.yaml``, checked with the real catalog, oracle and verifiers (no mocks).

For every family: the file loads; the oracle trajectory of the first 50 instances passes the family's own verifier;
a wrong answer (another instance's gold with a different value, or the gold plus one) fails; the first 1200 indices
hold at least 1000 distinct prompts; instances are reproducible across independent loads; the train/test split is
stable and near ``test_fraction``; level 3 differs from level 1 and uses larger numbers; the gold agrees with a
solution computed independently (sympy/itertools/the standard library, mostly from the prompt text). A few
answer-form tests pin down what Math-Verify accepts for the set and tuple answers (the reason the factoring family
answers with a set).

Math-Verify runs in the verifier's worker processes; instances of each family are built once per module and shared
by the tests that only read them.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import statistics
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
import sympy
from latex2sympy2_extended import latex2sympy

from amrsd_envs.catalog import TaskCatalog, TaskFamily, TaskInstance, load_task_file, load_tasks
from amrsd_envs.oracle import oracle_messages
from amrsd_envs.verifiers import Verification, check
from amrsd_envs.verifiers.math_pool import get_pool
from amrsd_envs.verifiers.math_verifier import for_math_verify

MATH_DIR = Path(__file__).resolve().parent.parent / "tasks" / "math"
FILES = sorted(MATH_DIR.glob("*.yaml"))
IDS = [f.stem for f in FILES]

ORACLE_INSTANCES = 50
PARSED_INSTANCES = 10
WRONG_INSTANCES = 12
DISTINCT_INDICES = 1200
DISTINCT_MIN = 1000
SPLIT_INDICES = 1000
LEVEL_INSTANCES = 20
SOLVED_INSTANCES = 25


@functools.cache
def _family(path: Path) -> TaskFamily:
    """One shared load per file at the default difficulty (tests that need a fresh load call load_task_file)."""
    return load_task_file(path)


@functools.cache
def _instances(path: Path) -> tuple[TaskInstance, ...]:
    fam = _family(path)
    return tuple(fam.instance(i) for i in range(DISTINCT_INDICES))


@functools.cache
def _level_instances(path: Path, level: int) -> tuple[TaskInstance, ...]:
    fam = load_task_file(path, difficulty=level)
    return tuple(fam.instance(i) for i in range(LEVEL_INSTANCES))


def _verify(inst: TaskInstance, response: str) -> Verification:
    return check(inst.verifier, inst.answer, response, **inst.verifier_options)


def _boxed(answer: str) -> str:
    return f"The answer is \\boxed{{{answer}}}."


def _value(path: Path, inst: TaskInstance) -> object:
    """The gold as a value (the derived value named in ``answer.expr``, parsed back from its text; a set comes
    back as a Python set), for building wrong answers."""
    expr = _family(path).spec.answer.expr  # type: ignore[union-attr]
    return sympy.sympify(inst.derived[expr])


# ----------------------------------------------------------------------------------------------------------------
# the suite as a whole


def test_suite_has_ten_families_that_load_together():
    assert len(FILES) >= 10, f"only {len(FILES)} math families: {IDS}"
    catalog = load_tasks(MATH_DIR)
    assert sorted(f.id for f in catalog) == sorted(f"math.{stem}" for stem in IDS)


# ----------------------------------------------------------------------------------------------------------------
# per family


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_family_loads_with_the_suite_conventions(path: Path):
    fam = load_task_file(path)
    spec = fam.spec
    assert spec.id == f"math.{path.stem}", "the family id is math.<file stem>"
    assert spec.domain == "math"
    assert spec.generator is not None and spec.generator.count >= DISTINCT_INDICES
    assert spec.tools == [] and spec.max_turns == 1
    assert spec.verifier.type == "math"
    assert spec.difficulty.levels == 3
    assert spec.split.test_fraction == 0.2
    assert spec.reference and spec.description
    inst = fam.instance(0)
    assert "\\boxed{}" in inst.prompt, "the prompt asks for the answer in \\boxed{}"
    assert inst.reference and "\\boxed" not in inst.reference, "the oracle adds the box; the reference must not"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_oracle_passes_its_own_verifier(path: Path):
    fam = _family(path)
    catalog = TaskCatalog([fam])
    failing = []
    for inst in _instances(path)[:ORACLE_INSTANCES]:
        response = oracle_messages(inst, catalog)[-1]
        verdict = _verify(inst, response)
        if not verdict.correct:
            failing.append(f"{inst.id} (gold {inst.answer!r}: {verdict.feedback})")
    assert not failing, f"{len(failing)}/{ORACLE_INSTANCES} oracle answers rejected: {failing}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_math_verify_reads_the_gold(path: Path):
    # the oracle's boxed gold matches the gold string exactly, which the verifier accepts without Math-Verify; a
    # model's differently written answer is compared by Math-Verify, so the gold must parse there too
    unread = []
    for inst in _instances(path)[:PARSED_INSTANCES]:
        gold = for_math_verify(inst.answer)
        result = get_pool().compare(gold, gold, timeout_s=30)
        if result.status != "equal":
            unread.append(f"{inst.id}: {inst.answer!r} -> {result.status} {result.detail}")
    assert not unread, unread


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_wrong_answers_fail(path: Path):
    insts = _instances(path)
    accepted = []
    for k, inst in enumerate(insts[:WRONG_INSTANCES]):
        # the gold of the next instance whose answer differs (golds are sympy's canonical LaTeX, so a different
        # string is a different value)
        other = next(o for o in insts[k + 1 :] if o.answer != inst.answer)
        wrong = [other.answer]
        value = _value(path, inst)
        if isinstance(value, sympy.Expr) and value.is_number:
            wrong.append(sympy.latex(value + 1))
        for answer in wrong:
            if _verify(inst, _boxed(answer)).correct:
                accepted.append(f"{inst.id}: {answer!r} accepted for gold {inst.answer!r}")
    assert not accepted, accepted


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_first_1200_indices_hold_1000_distinct_prompts(path: Path):
    prompts = {inst.prompt for inst in _instances(path)}
    assert len(prompts) >= DISTINCT_MIN, f"{len(prompts)} distinct prompts among {DISTINCT_INDICES}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_instances_are_reproducible_and_the_split_is_stable(path: Path):
    shared = _instances(path)
    fresh = load_task_file(path)  # an independent load: its own cache, its own sampling
    for i in (0, 1, 17, 512, 1199):
        assert fresh.instance(i) == shared[i], f"instance {i} differs between two loads"
    assert all(fresh.split_of(i) == shared[i].split for i in range(0, DISTINCT_INDICES, 97))
    test_fraction = sum(inst.split == "test" for inst in shared[:SPLIT_INDICES]) / SPLIT_INDICES
    assert 0.1 <= test_fraction <= 0.3, f"test fraction {test_fraction} on {SPLIT_INDICES} indices"


def _size(inst: TaskInstance) -> int:
    """How much number there is in an instance: the digits in its prompt and its gold."""
    return len(re.findall(r"\d", inst.prompt + inst.answer))


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_level_3_differs_from_level_1_and_is_larger(path: Path):
    easy, hard = _level_instances(path, 1), _level_instances(path, 3)
    assert {i.difficulty for i in hard} == {3}
    assert not {i.prompt for i in easy} & {i.prompt for i in hard}
    easy_size = statistics.mean(map(_size, easy))
    hard_size = statistics.mean(map(_size, hard))
    assert hard_size > easy_size, f"level 3 is not larger: {hard_size} digits vs {easy_size} at level 1"


@pytest.mark.parametrize("level", [2, 3])
@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_oracle_passes_at_higher_levels(path: Path, level: int):
    insts = _level_instances(path, level)
    catalog = TaskCatalog([load_task_file(path, difficulty=level)])
    failing = [i.id for i in insts if not _verify(i, oracle_messages(i, catalog)[-1]).correct]
    assert not failing, f"level {level}: oracle answers rejected for {failing}"


# ----------------------------------------------------------------------------------------------------------------
# the golds are right: each family's gold against a solution computed independently, mostly from the prompt text


def _ints(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"-?\d+", text)]


def _math_spans(prompt: str) -> list[str]:
    return re.findall(r"\$\$?(.+?)\$\$?", prompt, flags=re.DOTALL)


def _solve_arithmetic(inst: TaskInstance) -> object:
    expr = _math_spans(inst.prompt)[0].replace("\\times", "*").replace("\\div", "/")
    return sympy.sympify(expr)


def _solve_fractions(inst: TaskInstance) -> object:
    a, b, op, c, d = re.search(
        r"\\frac\{(\d+)\}\{(\d+)\} (\+|-|\\times|\\div) \\frac\{(\d+)\}\{(\d+)\}", inst.prompt
    ).groups()
    x, y = Fraction(int(a), int(b)), Fraction(int(c), int(d))
    result = {"+": x + y, "-": x - y, "\\times": x * y, "\\div": x / y}[op]
    return sympy.Rational(result.numerator, result.denominator)


def _solve_linear_system(inst: TaskInstance) -> object:
    body = re.search(r"\\begin\{cases\}(.+?)\\end\{cases\}", inst.prompt).group(1)
    names = sympy.symbols("x y z")
    equations = []
    for row in body.split("\\\\"):
        lhs, rhs = row.split("=")
        lhs = re.sub(r"(\d)([xyz])", r"\1*\2", lhs)
        equations.append(sympy.Eq(sympy.sympify(lhs), sympy.sympify(rhs)))
    unknowns = names[: len(equations)]
    solution = sympy.solve(equations, unknowns, dict=True)
    assert len(solution) == 1 and len(solution[0]) == len(unknowns), "the system must have a unique solution"
    return sympy.Tuple(*(solution[0][v] for v in unknowns))


def _polynomial(inst: TaskInstance) -> tuple[sympy.Expr, sympy.Symbol]:
    latex = re.sub(r"\s*=\s*0$", "", _math_spans(inst.prompt)[0])
    poly = latex2sympy(latex)
    (var,) = poly.free_symbols
    return sympy.expand(poly), var


def _solve_quadratic(inst: TaskInstance) -> object:
    poly, var = _polynomial(inst)
    assert sympy.degree(poly, var) == 2
    return set(sympy.solve(poly, var))


def _solve_factoring(inst: TaskInstance) -> object:
    poly, var = _polynomial(inst)
    content, factors = sympy.factor_list(poly)
    assert content == 1 and all(m == 1 for _, m in factors), f"{poly} is not primitive and squarefree"
    assert all(sympy.degree(f, var) == 1 for f, _ in factors), f"{poly} does not split into linear factors"
    return {f for f, _ in factors}


def _solve_derivative(inst: TaskInstance) -> object:
    f_latex, point = re.search(r"\$f\(x\) = (.+?)\$\. Compute \$f'\((-?\d+)\)\$", inst.prompt).groups()
    x = sympy.Symbol("x")
    return sympy.diff(latex2sympy(f_latex), x).subs(x, int(point))


def _solve_integral(inst: TaskInstance) -> object:
    lo, hi, integrand = re.search(
        r"\\int_\{(-?\d+)\}\^\{(-?\d+)\} \\left\((.+?)\\right\)\\,dx", inst.prompt
    ).groups()
    return sympy.integrate(latex2sympy(integrand), (sympy.Symbol("x"), int(lo), int(hi)))


def _solve_gcd_lcm(inst: TaskInstance) -> object:
    a, b = _ints(inst.prompt.splitlines()[0])[:2]
    return sympy.Tuple(math.gcd(a, b), math.lcm(a, b))


def _solve_modular_power(inst: TaskInstance) -> object:
    a, k, n = _ints(inst.prompt)[:3]
    return pow(a, k, n)


def _solve_linear_congruence(inst: TaskInstance) -> object:
    a, b, n = _ints(inst.prompt)[:3]
    return next(x for x in range(1, n + 1) if (a * x - b) % n == 0)


def _solve_committee(inst: TaskInstance) -> object:
    p = inst.params
    return math.comb(p["A"], p["k1"]) * math.comb(p["B"], p["k2"])


def _solve_permutations(inst: TaskInstance) -> object:
    n, s, k = (inst.params[name] for name in ("n", "s", "k"))
    if n <= 9:  # brute force: ordered role assignments whose first (lead) role goes to one of people 0..s-1
        return sum(1 for roles in itertools.permutations(range(n), k) if roles[0] < s)
    return s * math.perm(n - 1, k - 1)


def _solve_multiset(inst: TaskInstance) -> object:
    word = re.search(r"letters of\s+([A-Z]+)\?", inst.prompt).group(1)
    if len(word) <= 8:  # brute force over all orderings
        return len(set(itertools.permutations(word)))
    return math.factorial(len(word)) // math.prod(math.factorial(c) for c in Counter(word).values())


def _solve_dice(inst: TaskInstance) -> object:
    p = inst.params
    relation = {0: lambda v: v == p["t"], 1: lambda v: v >= p["t"], 2: lambda v: v <= p["t"]}[p["rel"]["kind"]]
    outcomes = [i + j for i in range(1, p["s1"] + 1) for j in range(1, p["s2"] + 1)]
    return sympy.Rational(sum(map(relation, outcomes)), len(outcomes))


def _solve_urn(inst: TaskInstance) -> object:
    p = inst.params
    r, g, b, k, i, j = (p[name] for name in ("r", "g", "b", "k", "i", "j"))
    favourable = math.comb(r, i) * math.comb(g, j) * math.comb(b, k - i - j)
    return sympy.Rational(favourable, math.comb(r + g + b, k))


SOLVERS = {
    "arithmetic": _solve_arithmetic,
    "fraction_sum": _solve_fractions,
    "fraction_product": _solve_fractions,
    "linear_system": _solve_linear_system,
    "linear_system_3x3": _solve_linear_system,
    "quadratic_roots": _solve_quadratic,
    "factoring": _solve_factoring,
    "derivative": _solve_derivative,
    "definite_integral": _solve_integral,
    "gcd_lcm": _solve_gcd_lcm,
    "modular_power": _solve_modular_power,
    "linear_congruence": _solve_linear_congruence,
    "binomial_committee": _solve_committee,
    "permutations": _solve_permutations,
    "multiset_arrangements": _solve_multiset,
    "probability_dice": _solve_dice,
    "probability_urn": _solve_urn,
}


def _same(gold: object, expected: object) -> bool:
    if isinstance(gold, set) or isinstance(expected, set):
        gold_items = sorted(map(sympy.sympify, gold), key=sympy.default_sort_key)  # type: ignore[arg-type]
        expected_items = sorted(map(sympy.sympify, expected), key=sympy.default_sort_key)  # type: ignore[arg-type]
        return len(gold_items) == len(expected_items) and all(
            sympy.simplify(a - b) == 0 for a, b in zip(gold_items, expected_items)
        )
    if isinstance(gold, (tuple, sympy.Tuple)):
        return len(gold) == len(expected) and all(  # type: ignore[arg-type]
            sympy.simplify(a - b) == 0 for a, b in zip(gold, expected)  # type: ignore[call-overload]
        )
    return sympy.simplify(sympy.sympify(gold) - sympy.sympify(expected)) == 0


def test_every_family_has_an_independent_solver():
    assert sorted(SOLVERS) == sorted(IDS), "add a solver for each new family (or drop the stale one)"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_gold_matches_an_independent_solution(path: Path):
    solve = SOLVERS[path.stem]
    cases = list(_instances(path)[:SOLVED_INSTANCES]) + list(_level_instances(path, 3)[:10])
    wrong = []
    for inst in cases:
        expected = solve(inst)
        if not _same(_value(path, inst), expected):
            wrong.append(f"{inst.id} (level {inst.difficulty}): gold {inst.answer!r}, independent {expected}")
    assert not wrong, wrong


# ----------------------------------------------------------------------------------------------------------------
# answer forms: what the math verifier (Math-Verify) accepts for the structured golds


def _first(stem: str, predicate=lambda inst: True) -> TaskInstance:
    return next(inst for inst in _instances(MATH_DIR / f"{stem}.yaml") if predicate(inst))


def test_factoring_accepts_the_set_in_any_order_and_rejects_the_expanded_polynomial():
    inst = _first("factoring")
    values = {k: sympy.sympify(v) for k, v in inst.derived.items()}
    f1, f2 = values["f1"], values["f2"]
    assert _verify(inst, _boxed(f"\\{{{sympy.latex(f2)}, {sympy.latex(f1)}\\}}")).correct
    # the point of the set form: Math-Verify would call the product and its expansion equal
    assert not _verify(inst, _boxed(sympy.latex(values["poly"]))).correct
    assert not _verify(inst, _boxed(f"\\{{{sympy.latex(values['poly'])}\\}}")).correct
    assert not _verify(inst, _boxed(f"\\{{{sympy.latex(2 * f1)}, {sympy.latex(f2)}\\}}")).correct
    assert not _verify(inst, _boxed(f"\\{{{sympy.latex(f1)}\\}}")).correct


def test_quadratic_roots_accept_any_order_and_reject_a_missing_root():
    inst = _first("quadratic_roots")
    roots = sorted(sympy.sympify(inst.derived["roots"]), key=float, reverse=True)  # str of a FiniteSet: "{a, b}"
    assert _verify(inst, _boxed(f"\\{{{sympy.latex(roots[0])}, {sympy.latex(roots[1])}\\}}")).correct
    assert not _verify(inst, _boxed(sympy.latex(roots[0]))).correct
    assert not _verify(inst, _boxed(f"\\{{{sympy.latex(roots[0])}, {sympy.latex(roots[0] + 1)}\\}}")).correct


def test_linear_system_is_an_ordered_pair():
    inst = _first("linear_system", lambda i: (lambda s: s[0] != s[1])(sympy.sympify(i.derived["sol"])))
    x, y = sympy.sympify(inst.derived["sol"])
    assert _verify(inst, _boxed(f"x = {sympy.latex(x)}, y = {sympy.latex(y)}")).correct
    assert not _verify(inst, _boxed(f"({sympy.latex(y)}, {sympy.latex(x)})")).correct
    assert not _verify(inst, _boxed(f"x = {sympy.latex(y)}, y = {sympy.latex(x)}")).correct


def test_definite_integral_with_exponentials_accepts_an_equivalent_form():
    inst = load_task_file(MATH_DIR / "definite_integral.yaml", difficulty=3).instance(0)
    value = sympy.sympify(inst.derived["result"])
    assert value.has(sympy.E) or value.has(sympy.exp), f"level 3 gold {inst.answer!r} has no exponential"
    assert _verify(inst, _boxed(sympy.latex(sympy.expand(value), order="rev-lex"))).correct
    assert _verify(inst, _boxed(f"{float(value):.8f}")).correct
    assert not _verify(inst, _boxed(f"{float(value) + 0.01:.8f}")).correct
