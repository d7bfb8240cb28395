"""``math.champ``: the CHAMP problems of the installed ``champ-dataset`` package, and CHAMP's human hints as an
outside test of the reflection leak filter (docs/BENCHMARKS.md, "CHAMP hints through the leak filter").

(a) the family loads from the package (no network), keeps the answer-checkable problems (counted per category),
    and its oracle (reference + boxed gold) passes the math verifier on every kept problem; Math-Verify reads each
    gold as the value CHAMP states (another spelling of it passes, the gold plus one fails);
(b) every kept problem's human hints, one ``<hint>`` each, go through ``leak_filter`` with what the trainer passes
    for this task (``gold=task.answer, reference=task.reference``; no peer, tools or choices), and once more with
    no reference (the gold checks alone); accepted and rejected are counted, rejections by reason;
(c) each hint followed by the gold written several ways ("So the answer is ...": as stored, boxed, in CHAMP's own
    words, in words, as a decimal or an unreduced fraction, each element of a set) must be rejected.

Run with ``-s`` to see the counts: ``.venv/bin/python -m pytest -q tests/test_champ.py -s``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("champ_dataset", reason="pip install champ-dataset")

from amrsd_envs.catalog import TaskFamily, TaskInstance, load_task_file  # noqa: E402
from amrsd_envs.datasets import champ  # noqa: E402
from amrsd_envs.errors import TaskSpecError  # noqa: E402
from amrsd_envs.oracle import oracle_messages  # noqa: E402
from amrsd_envs.verifiers import check  # noqa: E402
from amrsd_train.reflection import leak_filter  # noqa: E402

SPEC = Path(__file__).resolve().parent.parent / "tasks" / "datasets" / "champ.yaml"
TOTAL = 270
KEPT = 184
KEPT_PER_CATEGORY = {"Combinatorics": 38, "Inequality": 43, "Number-Theory": 41, "Polynomial": 32, "Sequence": 30}
HINTS = 304  # human hints of the kept problems
# Real hints the leak filter accepts (measured: 42 and 241 of 304, docs/BENCHMARKS.md); floors a little below.
ACCEPTED_WITH_REFERENCE_FLOOR = 38
ACCEPTED_GOLD_ONLY_FLOOR = 230
# A gold with more values than the filter's MAX_GOLD_COMPONENTS (4) has no per-value check: the six roots of
# P_Polynomial_38 pass one by one (and in CHAMP's "x=±1, ±2, ±1/2"). Pinned here; see the xfail test below.
LARGE_SET_GOLDS = {"math.champ/P_Polynomial_38"}


@functools.cache
def family() -> TaskFamily:
    return load_task_file(SPEC)


@functools.cache
def instances() -> tuple[TaskInstance, ...]:
    fam = family()
    return tuple(fam.instance(i) for i in range(len(fam)))


@functools.cache
def rows() -> dict[str, dict]:
    return {f"math.champ/{r['id']}": r for r in champ.read_rows()}


# -- (a) the family ---------------------------------------------------------------------------------------------


def test_kept_problems_and_categories():
    raw = champ.load_raw()
    assert len(raw["problems"]) == TOTAL
    insts = instances()
    per = Counter(inst.params["category"] for inst in insts)
    print(f"\nmath.champ: {len(insts)} of {TOTAL} problems kept; per category: {dict(sorted(per.items()))}")
    assert len(insts) == KEPT and dict(per) == KEPT_PER_CATEGORY
    assert len({inst.id for inst in insts}) == KEPT
    splits = Counter(inst.split for inst in insts)
    assert 0.1 < splits["test"] / KEPT < 0.3


def test_instances_carry_problem_answer_and_delimited_reference():
    inst = instances()[0]
    assert inst.id == "math.champ/P_Combinatorics_1" and inst.answer == "239"
    assert inst.prompt.startswith("Let a string consist of digit 1, 2, 3.")
    ref = inst.reference or ""
    assert ref.startswith("Hints:\n- Let x_n, y_n, z_n be") and "\n\nConcepts:\n- " in ref and "\n\nSolution:\n" in ref
    assert ref.rstrip().endswith("x_6+y_6+z_6=70+99+70=239 such strings.")


def test_oracle_passes_on_every_kept_problem():
    catalog = {family().id: family()}  # oracle_messages reads catalog[family_id].spec
    failed = []
    for inst in instances():
        (message,) = oracle_messages(inst, catalog)  # type: ignore[arg-type]
        if not check(inst.verifier, inst.answer, message, **inst.verifier_options).correct:
            failed.append(inst.id)
    assert not failed, failed


# Golds whose sympy spelling (factorial(n), floor, binomial, Interval) Math-Verify's expression reader does not take:
# another LaTeX spelling instead (CHAMP's own form where it differs from the stored gold).
_OTHER_SPELLING = {
    "P_Combinatorics_3": "2^{\\lfloor n/2 \\rfloor} \\cdot \\lfloor n/2 \\rfloor!",
    "P_Combinatorics_16": "\\binom{n+1}{2m+1}",
    "P_Combinatorics_25": "(n)!",
    "P_Combinatorics_35": "\\frac{(2n)!}{2^n n!}",
    "P_Combinatorics_36": "\\frac{(n-1)!}{2}",
    "P_Inequality_1": "[-1,1]",
}


def _plain(row: dict) -> str:
    """The gold as sympy prints it (``2**(n - 1)``, ``{1, 19}``): another spelling Math-Verify must accept."""
    import sympy
    from math_verify import parse

    if row["id"] in _OTHER_SPELLING:
        return _OTHER_SPELLING[row["id"]]
    parsed = parse(f"${row['answer']}$")
    assert parsed, f"Math-Verify cannot read the gold of {row['id']}: {row['answer']!r}"
    value = parsed[0]
    if isinstance(value, (set, sympy.FiniteSet)):
        return ", ".join(sorted(map(str, value)))
    return str(value).replace("**", "^")


def test_math_verify_reads_every_gold_as_champs_value():
    """Another spelling of the gold passes and the gold plus one fails, so a gold Math-Verify misread (as text,
    or as a different expression) would show up here, not only in the oracle test (where gold equals answer)."""
    wrong_passed, right_failed = [], []
    for inst in instances():
        row = rows()[inst.id]
        if not check("math", inst.answer, f"\\boxed{{{_plain(row)}}}").correct:
            right_failed.append((inst.id, inst.answer, _plain(row)))
        if not inst.answer.startswith(("\\{", "[")):
            if check("math", inst.answer, f"\\boxed{{{inst.answer} + 1}}").correct:
                wrong_passed.append(inst.id)
    assert not right_failed, right_failed
    assert not wrong_passed, wrong_passed


@pytest.mark.parametrize(
    ("text", "problem", "gold"),
    [
        ("239", "", "239"),
        ("C(10, 5), or equivalently 252", "", "252"),
        ("5/14, or approximately 35.7%", "", "\\frac{5}{14}"),
        ("0 is the only possible value", "", "0"),
        ("100 (i.e., all values)", "", "100"),
        ("The limit exists and is equal to 2/3", "", "\\frac{2}{3}"),
        ("1, 4 and 9", "", "\\{1, 4, 9\\}"),
        ("x=16 and x=81", "", "\\{16, 81\\}"),
        ("x=±1", "", "\\{1, -1\\}"),
        ("[-1, 1]", "", "[-1, 1]"),
        ("2^997", "", "2^{997}"),
        ("No", "", None),
        ("No integer solutions", "", None),
        ("x=6, y=5", "", None),
        ("a=3, b=-4", "", None),
        ("f(x)=0 or f(x)=1", "", None),
        ("At least 1 number", "", None),
        ("x(n)<y(n-1) for all n≥3", "", None),
        ("x(x-1)(x-2)...(x-2022)", "", None),
        ("(x^2+x+1)(x^2-x+1)", "Factorize x^4+x^2+1 into terms of integer coefficients.", None),
    ],
)
def test_checkable_answer(text: str, problem: str, gold: str | None):
    assert champ.checkable_answer(text, problem) == gold


def test_a_missing_package_names_the_pip_install(monkeypatch, tmp_path):
    monkeypatch.setattr(champ, "PACKAGE", "champ_dataset_not_installed")
    champ._rows.cache_clear()
    try:
        with pytest.raises(TaskSpecError) as err:
            load_task_file(SPEC).instance(0)
    finally:
        champ._rows.cache_clear()
    text = str(err.value)
    assert "pip install champ-dataset" in text and "dataset.reader" in text and "champ.yaml" in text


def test_unknown_reader_and_both_sources_are_spec_errors(tmp_path):
    base = 'id: x.y\ndomain: math\nverifier: {type: math}\nprompt: "{q}"\n'
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "dataset: {reader: nope, fields: {q: q, answer: a}}\n")
    with pytest.raises(TaskSpecError) as err:
        load_task_file(bad).instance(0)
    assert "dataset.reader" in str(err.value) and "unknown dataset reader 'nope'" in str(err.value)
    both = tmp_path / "both.yaml"
    both.write_text(base + "dataset: {reader: champ, path: x.jsonl, fields: {q: q, answer: a}}\n")
    with pytest.raises(TaskSpecError) as err:
        load_task_file(both)
    assert "exactly one of `path`" in str(err.value)


# -- (b) real hints through the leak filter -----------------------------------------------------------------------


def _reason_kind(reason: str) -> str:
    if reason.startswith("contains the gold answer") and " as " in reason:
        return "number equal to the gold"
    if reason.startswith("contains the gold answer"):
        return "the gold as a string"
    if reason.startswith("copies an"):
        return "8-gram from the reference"
    return reason


def _hint_verdicts(with_reference: bool) -> list[tuple[str, str, str, bool, str]]:
    out = []
    for inst in instances():
        for hint in rows()[inst.id]["hints"]:
            v = leak_filter(f"<hint>{hint}</hint>", gold=inst.answer,
                            reference=inst.reference if with_reference else None)
            out.append((inst.id, inst.answer, hint, v.ok, v.reason))
    return out


def _report(title: str, verdicts: list) -> tuple[int, int, Counter]:
    accepted = sum(1 for v in verdicts if v[3])
    kinds = Counter(_reason_kind(v[4]) for v in verdicts if not v[3])
    print(f"\n{title}: {len(verdicts)} hints, {accepted} accepted, {len(verdicts) - accepted} rejected: {dict(kinds)}")
    return accepted, len(verdicts) - accepted, kinds


def test_real_hints_with_what_the_trainer_passes():
    """gold=task.answer, reference=task.reference: the reference holds the hints themselves, so a hint of 8+ words
    is a verbatim copy of it (phase 3 rejects a reflection that pastes the reference); short hints and those
    without a number equal to the gold pass."""
    verdicts = _hint_verdicts(with_reference=True)
    accepted, rejected, kinds = _report("real hints, reference=task.reference", verdicts)
    assert len(verdicts) == HINTS
    assert accepted >= ACCEPTED_WITH_REFERENCE_FLOOR
    assert set(kinds) <= {"number equal to the gold", "the gold as a string", "8-gram from the reference"}
    for _id, _gold, hint, ok, reason in verdicts:  # every copy rejection is a real 8-word copy of the hint
        if not ok and reason.startswith("copies an"):
            assert len(re.findall(r"[a-z0-9]+", hint.lower())) >= 8


def test_real_hints_gold_checks_only():
    """reference=None: only the gold checks (string, numbers by value); the count of hints the gold matcher alone
    lets through, and each rejection printed with the number that matched."""
    verdicts = _hint_verdicts(with_reference=False)
    accepted, rejected, kinds = _report("real hints, gold checks only (reference=None)", verdicts)
    for pid, gold, hint, ok, reason in verdicts:
        if not ok:
            print(f"  rejected {pid} (gold {gold}): {reason} | {hint[:100]}")
    assert accepted >= ACCEPTED_GOLD_ONLY_FLOOR
    assert set(kinds) <= {"number equal to the gold", "the gold as a string"}


# -- (c) hint + answer variants -------------------------------------------------------------------------------------

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _words(n: int) -> str:
    """``n`` (0 <= n < 10**6) in English words, as a hint might spell it: ``two hundred thirty-nine``."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _words(n % 100))
    return _words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + _words(n % 1000))


def _value_spellings(gold: str) -> list[tuple[str, str]]:
    """(kind, text) of the gold's value written other ways; empty for an expression in variables."""
    m = re.fullmatch(r"(-?)(\d+)", gold) or re.fullmatch(r"(-\s*)?\\frac\{(\d+)\}\{(\d+)\}", gold)
    if m is None:
        return []
    sign = "-" if m.group(1) else ""
    value = Fraction(int(m.group(2)), int(m.group(3)) if m.lastindex == 3 else 1) * (-1 if sign else 1)
    p, q = abs(value.numerator), value.denominator
    out = [("unreduced fraction", f"{sign}{2 * p}/{2 * q}"), ("LaTeX fraction", f"{sign}\\dfrac{{{3 * p}}}{{{3 * q}}}"),
           ("decimal", f"{float(value):.6f}".rstrip("0").rstrip(".") if q != 1 else f"{value}.0")]
    if q == 1 and p < 10**6:
        out.append(("words", ("minus " if sign else "") + _words(p)))
    return out


def _variants(inst: TaskInstance, hint: str) -> list[tuple[str, str]]:
    gold, row = inst.answer, rows()[inst.id]
    out = [("as stored", f"{hint} So the answer is {gold}."),
           ("boxed", f"{hint} So the answer is $\\boxed{{{gold}}}$."),
           ("CHAMP's wording", f"{hint} So the answer is {row['answer_text']}.")]
    if gold.startswith("\\{"):
        for element in gold[2:-2].split(", "):
            out.append(("one set element", f"{hint} One of the answers is {element}."))
    out += [(kind, f"{hint} So the answer is {text}.") for kind, text in _value_spellings(gold)]
    return out


def _variant_verdicts() -> tuple[int, Counter, list[tuple[str, str, str, str]]]:
    """Each problem's first hint (or a neutral sentence when it has none) plus the gold in several spellings,
    through the filter as the trainer calls it; (count, count per kind, the accepted ones)."""
    total, slipped, per_kind = 0, [], Counter()
    for inst in instances():
        hints = rows()[inst.id]["hints"]
        hint = hints[0] if hints else "Look at small cases first."
        for kind, text in _variants(inst, hint):
            total += 1
            per_kind[kind] += 1
            if leak_filter(f"<hint>{text}</hint>", gold=inst.answer, reference=inst.reference).ok:
                slipped.append((inst.id, kind, inst.answer, text[-80:]))
    return total, per_kind, slipped


def test_hint_plus_answer_variants_are_all_rejected():
    total, per_kind, slipped = _variant_verdicts()
    print(f"\nhint + answer variants: {total} built ({dict(per_kind)}), {total - len(slipped)} rejected, "
          f"{len(slipped)} accepted")
    for s in slipped:
        print("  accepted:", s)
    assert total > 1000
    assert not [s for s in slipped if s[0] not in LARGE_SET_GOLDS], slipped
    assert len(slipped) == 7  # P_Polynomial_38: its six roots one by one, and CHAMP's "x=±1, ±2, ±1/2"


@pytest.mark.xfail(strict=True, reason="leak_filter has no per-value check for a gold of more than "
                   "MAX_GOLD_COMPONENTS (4) values; when it gets one, drop this xfail and LARGE_SET_GOLDS")
def test_variants_of_a_six_element_set_gold_are_rejected():
    (inst,) = [i for i in instances() if i.id in LARGE_SET_GOLDS]
    hint = rows()[inst.id]["hints"][0]
    assert not any(leak_filter(f"<hint>{text}</hint>", gold=inst.answer, reference=inst.reference).ok
                   for _kind, text in _variants(inst, hint))
