"""The algorithm registry and the pieces of AMR-SD's credit step that need no model."""

from __future__ import annotations

import pytest

from amrsd_train.algorithms import ALGORITHMS, hint_metrics, is_leak
from amrsd_train.reflection import HintResult, LeakVerdict


def test_registry_holds_every_configurable_algorithm_and_names_them_on_a_typo():
    from amrsd_train.config import TrainConfig

    configurable = set(ALGORITHMS.names())
    assert configurable == {"grpo", "amrsd", "raw_sd", "rlsd", "gcpo", "entropy_realloc"}
    for name in configurable:  # the config takes exactly the registered names
        assert TrainConfig(algorithm=name).algorithm == name
    with pytest.raises(ValueError, match="unknown algorithm 'amrds'.*Did you mean 'amrsd'"):
        TrainConfig(algorithm="amrds")
    with pytest.raises(ValueError, match="unknown algorithm 'amrds'.*Did you mean 'amrsd'"):
        ALGORITHMS.get("amrds")
    for name in configurable:
        algo = ALGORITHMS.get(name)
        assert isinstance(algo.uses_teacher, bool) and isinstance(algo.uses_reflection, bool)


def test_leaks_are_content_rejections_not_form_rejections():
    assert is_leak(LeakVerdict(False, "contains the gold answer '17'"))
    assert is_leak(LeakVerdict(False, "names option B"))
    assert is_leak(LeakVerdict(False, "copies an 8-gram of the reference: 'a b c d e f g h'"))
    assert not is_leak(LeakVerdict(False, "no <hint> tag"))
    assert not is_leak(LeakVerdict(False, "more than 3 questions"))
    assert not is_leak(LeakVerdict(True, "ok"))


def test_hint_metrics_count_samples_rejections_and_reflected_groups():
    ok, tag, gold = LeakVerdict(True, "ok"), LeakVerdict(False, "no <hint> tag"), LeakVerdict(
        False, "contains the gold answer '17'")
    results = [
        HintResult("Check the first call?", ["<hint>Check the first call?</hint>"], [ok], tokens=9),
        HintResult(None, ["x", "y"], [tag, gold]),
        HintResult("Which value?", ["junk", "<hint>Which value?</hint>"], [tag, ok], tokens=5),
    ]
    m = hint_metrics(results, n_reflected=3, n_groups=4)
    assert m["reflect/accept_rate"] == pytest.approx(2 / 3)
    assert m["reflect/leak_rate"] == pytest.approx(1 / 5)  # one of five samples gave something away
    assert m["reflect/hint_tokens"] == 7.0 and m["reflect/samples"] == 5.0
    assert m["reflect/groups_with_signal_frac"] == 0.75
    assert m["reflect/reject/no_hint_tag"] == 2.0 and m["reflect/reject/contains_the_gold"] == 1.0
