"""Meta-reflection (docs/ALGORITHMS.md, amrsd (a)): the leak filter, diagnosis on the real catalog and peer buffer,
the prompts, and the Reflector on a real tiny model through the real hf engine."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amrsd_envs.catalog import TaskInstance, load_env_tasks
from amrsd_envs.oracle import OraclePolicy, oracle_messages
from amrsd_envs.peers import PeerBuffer
from amrsd_train.config import ReflectionConfig
from amrsd_train.engines import SamplingParams, make_engine
from amrsd_train.models import build_tiny_model
from amrsd_train.reflection import (
    NULL_HINT,
    PROMPTS_DIR,
    Attempt,
    Diagnosis,
    HintResult,
    LeakVerdict,
    PromptTemplates,
    Reflector,
    count_questions,
    diagnose,
    extract_hint,
    leak_filter,
    raw_context,
    redact_gold,
    reflection_jobs,
    reflection_messages,
    teacher_messages,
    vet_hint,
)

GOOD_HINT = "Did you copy the calculator's result exactly into the second call?"


def tagged(text: str) -> str:
    return f"<hint>{text}</hint>"


# ------------------------------------------------------------------------------------------------- leak filter

GOLD_17_LEAKS = [
    "Is the answer 17?",
    "Could it be seventeen?",
    "Is the length 17 cm?",
    "Is it 17cm?",
    "Does 34/2 look right?",
    "Does 34 / 2 look right?",
    r"Is it \frac{34}{2}?",
    r"Is it \dfrac{51}{3}?",
    "Is the result 17.0?",
    "Is the result 17.000?",
    r"Did you write \boxed{17}?",
    "Is it -17?",
    "Is it minus seventeen?",
    r"Is it 1.7 \times 10^{1}?",
    "Is it 1.7e1?",
    "Is it 1,700%?",
]


@pytest.mark.parametrize("text", GOLD_17_LEAKS)
def test_leak_filter_catches_the_gold_number_in_any_notation(text: str) -> None:
    verdict = leak_filter(tagged(text), gold="17")
    assert not verdict.ok
    assert verdict.reason.startswith("contains the gold answer '17'")


@pytest.mark.parametrize(
    ("text", "gold", "kwargs"),
    [
        ("Is it one hundred and five?", "105", {}),
        ("Is it twelve thousand three hundred and forty-five?", "12345", {}),
        ("Is it 12,345?", "12345", {}),
        ("Is it 5/12?", r"\frac{5}{12}", {}),
        ("Is it 10/24?", r"\frac{5}{12}", {}),
        ("Is it about 0.4167?", r"\frac{5}{12}", {}),
        ("Is it -40/91?", r"- \frac{40}{91}", {}),
        ("Are the roots 3 and 14?", r"\left\{3, 14\right\}", {}),
        (r"Is it \boxed{(6, 2)}?", r"\left( 6, \  2\right)", {}),
        ("Is the power 6.56 W?", "6.562 W", {"rtol": 0.01}),
        ("Is the power 6562 mW?", "6.562 W", {}),
        ("Is the charge 2.67355e-19 J?", "2.67355e-19 J", {"rtol": 0.001}),
        (r"Is it 2.674 \times 10^{-19}?", "2.67355e-19 J", {"rtol": 0.001}),
        ("Is it 13.105?", "13.1", {"atol": 0.01}),
        ("Is the city paris?", "Paris", {}),
    ],
)
def test_leak_filter_catches_other_gold_forms(text: str, gold: str, kwargs: dict) -> None:
    verdict = leak_filter(tagged(text), gold=gold, **kwargs)
    assert not verdict.ok and verdict.reason.startswith(f"contains the gold answer {gold!r}"), verdict


@pytest.mark.parametrize(
    "text", ["Is it (B)?", "Did you consider option B?", "Maybe the answer is B.", "B) looks wrong", r"Why \boxed{B}?",
             "Why option c?"]
)
def test_leak_filter_catches_option_letters(text: str) -> None:
    verdict = leak_filter(tagged(text), gold="B", choices=["London", "Paris", "Rome"])
    assert not verdict.ok and verdict.reason.startswith("names option "), verdict


def test_leak_filter_catches_option_text_but_not_articles() -> None:
    choices = ["London", "Paris", "Rome"]
    named = leak_filter(tagged("Is the capital PARIS?"), gold="B", choices=choices)
    assert named == LeakVerdict(False, "names option text 'Paris'")
    assert leak_filter(tagged("Is the answer a city on a river?"), gold="B", choices=choices).ok
    assert leak_filter(tagged("Which letter did you pick, and why?"), gold="B", choices=choices).ok


def test_leak_filter_catches_tool_arguments() -> None:
    args = ["3*4+5", "1550 * 5 + 1", "1550", "14.7709715664"]
    for text, arg in [
        ("Did you send 3 * 4 + 5?", "3*4+5"),
        ("Did you send 1550*5+1 to the calculator?", "1550 * 5 + 1"),
        ("Is x one thousand five hundred and fifty?", "1550"),
        ("Is x 1,550?", "1550"),
        ("Did you pass 14.770972 lb on?", "14.7709715664"),
    ]:
        assert leak_filter(tagged(text), gold="7751", tool_args=args) == LeakVerdict(
            False, f"contains tool argument {arg!r}"
        ), text
    assert leak_filter(tagged("Did you use the first result in the second call?"), gold="7751", tool_args=args).ok


def test_leak_filter_catches_copied_8_grams_of_reference_and_peer() -> None:
    reference = "First x = 669 + 881. Then multiply the intermediate value by the factor given in the task and add."
    peer = "assistant: I will call the calculator with the first expression and then reuse its exact result."
    from_reference = leak_filter(
        tagged("Then, multiply the intermediate value by the factor given?"), gold="7751", reference=reference
    )
    assert not from_reference.ok and from_reference.reason.startswith("copies an 8-gram of the reference")
    from_peer = leak_filter(
        tagged("Did you call the calculator with the first expression and then reuse it?"), gold="7751", peer=peer
    )
    assert not from_peer.ok and from_peer.reason.startswith("copies an 8-gram of the peer")
    seven_words = leak_filter(tagged("Did you multiply the intermediate value by the factor?"), gold="7751",
                              reference=reference, peer=peer)
    assert seven_words.ok, seven_words


@pytest.mark.parametrize("text", [GOOD_HINT, "Did you copy it?", f"{GOOD_HINT} more text"])
def test_leak_filter_needs_both_tags(text: str) -> None:
    assert leak_filter(text, gold="17") == LeakVerdict(False, "no <hint> tag")
    assert leak_filter(f"<hint>{text}", gold="17") == LeakVerdict(False, "no <hint> tag")
    assert leak_filter("<hint>  </hint>", gold="17") == LeakVerdict(False, "empty hint")


@pytest.mark.parametrize(
    "text",
    [
        GOOD_HINT,
        "Which quantity did the question ask for? Did you check the units of your answer?",
        "Is 12 really the intermediate value? You added 5 where the task subtracts.",
        "The second call used 170 instead of the first result; why?",
        "Did you round 16.9 too early?",
        "Did you add the two fractions over a common denominator of 35?",
    ],
)
def test_leak_filter_accepts_socratic_hints_with_unrelated_numbers(text: str) -> None:
    verdict = leak_filter(
        f"Some preamble. {tagged(text)}", gold="17", reference="x = 3 + 14 = 17.", peer="assistant: \\boxed{17}",
        tool_args=["3 + 14"],
    )
    assert verdict == LeakVerdict(True, "ok")


def test_leak_filter_checks_only_the_hint_and_refuses_an_empty_gold() -> None:
    assert leak_filter(f"The answer is 17. {tagged(GOOD_HINT)}", gold="17").ok
    with pytest.raises(ValueError, match="gold must be a non-empty string"):
        leak_filter(tagged(GOOD_HINT), gold=" ")


# -- property: a Socratic template is accepted, and rejected once the gold is written into it in any supported way

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell(n: int) -> str:
    """English words for an integer (an independent writer, not the filter's reader)."""
    if n < 0:
        return "minus " + spell(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{_ONES[n // 100]} hundred" + (f" and {spell(n % 100)}" if n % 100 else "")
    for scale, name in ((10**6, "million"), (10**3, "thousand")):
        if n >= scale:
            return f"{spell(n // scale)} {name}" + (f" {spell(n % scale)}" if n % scale else "")
    raise AssertionError("unreachable")


RENDERINGS = {
    "digits": str,
    "words": spell,
    "units": lambda g: f"{g} cm",
    "fraction": lambda g: f"{2 * g}/2",
    "latex_fraction": lambda g: f"\\frac{{{3 * g}}}{{3}}",
    "decimal": lambda g: f"{g}.0",
    "boxed": lambda g: f"\\boxed{{{g}}}",
    "thousands": lambda g: f"{g:,}",
}
SOCRATIC = [
    "Did you copy the calculator's result exactly into the next call? Is {} what the tool returned?",
    "Which operation does the question ask for? Would {} survive a check of the units?",
    "Did you read the tool response before answering? Why write {} there?",
]


@settings(max_examples=300, deadline=None)
@given(
    gold=st.integers(min_value=-10**6, max_value=10**6),
    rendering=st.sampled_from(sorted(RENDERINGS)),
    template=st.sampled_from(SOCRATIC),
)
def test_property_gold_rendered_into_a_socratic_hint_is_rejected(gold: int, rendering: str, template: str) -> None:
    leaked = template.format(RENDERINGS[rendering](gold))
    verdict = leak_filter(tagged(leaked), gold=str(gold))
    assert not verdict.ok and verdict.reason.startswith("contains the gold answer"), (leaked, verdict)
    assert leak_filter(tagged(template.format("that")), gold=str(gold)).ok


# ------------------------------------------------------------------------------------------ hints and questions


def test_extract_hint_and_count_questions() -> None:
    assert extract_hint("x <hint> Why? </hint> y") == "Why?"
    assert extract_hint("<hint>unclosed") is None and extract_hint("no tag </hint>") is None
    assert count_questions("Why? How? And what?") == 3
    assert count_questions("Check the sign.\nCheck the units.\nCheck the copy.\nCheck the box.") == 4
    assert count_questions("One critique without a question mark.") == 1


def test_vet_hint_limits_questions() -> None:
    diag = Diagnosis("t", "What is y?", [], None, None, None, "17", [], None)
    assert vet_hint(tagged("Why? How? What?"), diag, 3).ok
    assert vet_hint(tagged("Why? How? What? Where?"), diag, 3) == LeakVerdict(False, "more than 3 questions")
    assert vet_hint(tagged("Is it 17?"), diag, 3).reason.startswith("contains the gold answer")


def test_redact_gold_hides_every_notation_and_keeps_the_rest() -> None:
    text = "x = 12 + 5 = 17, i.e. seventeen or 34/2 or 17.0 cm; 117 and 1.7 stay."
    assert redact_gold(text, "17") == (
        "x = 12 + 5 = [hidden], i.e. [hidden] or [hidden] or [hidden] cm; 117 and 1.7 stay."
    )
    assert redact_gold("I pick (B) Paris, not (C).", "B", choices=["London", "Paris", "Rome"]) == (
        "I pick ([hidden]) [hidden], not (C)."
    )


# ------------------------------------------------------------------------------------------- diagnose, real tasks


@pytest.fixture(scope="module")
def tool_catalog():
    return load_env_tasks(["AMRSD-ToolUse-v0"], families=["tooluse.calc_chain"])


@pytest.fixture(scope="module")
def math_catalog():
    return load_env_tasks(["AMRSD-Math-v0"], families=["math.fraction_sum"])


@pytest.fixture(scope="module")
def templates() -> PromptTemplates:
    return PromptTemplates.load()


def transcript(task: TaskInstance, catalog) -> str:
    """The agent's side of an oracle episode, written the way the env writes peer transcripts."""
    return "\n".join(f"assistant: {m}" for m in oracle_messages(task, catalog))


def run_episode(env, policy, task_id: str) -> Attempt:
    messages, info = env.reset(options={"task_id": task_id})
    while True:
        messages, _, terminated, truncated, info = env.step(policy(messages, info.get("tools")))
        if terminated or truncated:
            break
    verification = info["verification"]
    agent_side = "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] in ("assistant", "tool"))
    return Attempt(verification.extracted, verification.correct, verification.feedback, agent_side)


def test_diagnose_real_calc_chain_episodes_with_a_real_peer_buffer(tool_catalog) -> None:
    buffer = PeerBuffer()
    env = gym.make("AMRSD-ToolUse-v0", tasks=tool_catalog, peer_buffer=buffer)
    try:
        task = tool_catalog["tooluse.calc_chain"].instance(0)
        oracle = run_episode(env, OraclePolicy(env), task.id)
        wrong = [run_episode(env, lambda m, t, a=a: f"y = \\boxed{{{a}}}", task.id) for a in (12, 12, 99)]
    finally:
        env.close()
    assert oracle.correct and not any(a.correct for a in wrong)
    assert buffer.successful_peer(task.id) is not None

    only_wrong = diagnose(task, wrong, catalog=tool_catalog, peer_buffer=buffer)
    assert only_wrong.peer == buffer.successful_peer(task.id).transcript  # no correct attempt: the buffer's peer
    assert only_wrong.common_wrong == ("12", 2)  # the env recorded the group too: counted once, not twice
    assert only_wrong.gold == task.answer and only_wrong.reference == task.reference
    x = task.derived["x"]
    assert x in only_wrong.tool_args  # the intermediate is not in the prompt; the first expression is
    assert task.derived["first"] not in only_wrong.tool_args
    assert not leak_filter(tagged(f"Did you get x = {x}?"), gold=task.answer, tool_args=only_wrong.tool_args).ok

    group = [*wrong, Attempt(task.answer, True, "correct", "assistant: the group's own success")]
    assert diagnose(task, group, catalog=tool_catalog, peer_buffer=buffer).peer == "assistant: the group's own success"
    assert diagnose(task, wrong, catalog=tool_catalog).peer is None


def test_diagnose_math_task_and_missing_catalog(tool_catalog, math_catalog) -> None:
    task = math_catalog["math.fraction_sum"].instance(1)
    buffer = PeerBuffer()
    buffer.record(task.id, answer="1/2", correct=False, transcript="assistant: \\boxed{1/2}")
    attempts = [Attempt("1/3", False, f"expected {task.answer}", "assistant: \\boxed{1/3}")]
    diag = diagnose(task, attempts, peer_buffer=buffer)
    assert diag.tool_args == [] and diag.choices is None and diag.peer is None
    assert diag.common_wrong == ("1/3", 1)  # a tie: the group's answer comes first
    assert task.answer not in diag.attempts[0].feedback and "[hidden]" in diag.attempts[0].feedback
    assert raw_context(diag) == task.reference
    with pytest.raises(ValueError, match="pass catalog="):
        diagnose(tool_catalog["tooluse.calc_chain"].instance(0), attempts)


def test_raw_context_falls_back_to_the_peer_then_none() -> None:
    diag = Diagnosis("t", "p", [], "assistant: peer", None, None, "17", [], None)
    assert raw_context(diag) == "assistant: peer"
    diag.peer = None
    assert raw_context(diag) is None


def _gold_is_hidden(diag: Diagnosis, text: str) -> bool:
    verdict = leak_filter(tagged(text), gold=diag.gold, choices=diag.choices, rtol=diag.rtol, atol=diag.atol)
    return verdict.ok


def test_reflection_messages_never_contain_the_gold_for_200_real_instances(tool_catalog, math_catalog,
                                                                             templates) -> None:
    checked = 0
    families = [(tool_catalog, tool_catalog["tooluse.calc_chain"]), (math_catalog, math_catalog["math.fraction_sum"])]
    for index in range(400):
        catalog, family = families[index % 2]
        task = family.instance(index)
        buffer = PeerBuffer()
        buffer.record(task.id, answer=task.answer, correct=True, transcript=transcript(task, catalog))
        attempts = [
            Attempt(task.answer, True, "correct", transcript(task, catalog)),
            Attempt("12", False, "the final answer does not match", "assistant: \\boxed{12}"),
            Attempt(None, False, "no final answer found", "assistant: I am not sure."),
        ]
        diag = diagnose(task, attempts, catalog=catalog, peer_buffer=buffer)
        # Numbers the prompt shows on purpose: the task itself, the question limit, counts of wrong answers.
        if not _gold_is_hidden(diag, f"{task.prompt} 1 2 3 times"):
            continue
        assert task.answer in diag.peer and task.answer in (diag.reference or "")  # redaction has work to do
        for granularity, attempt in (("group", None), ("rollout", 0), ("rollout", 1)):
            messages = reflection_messages(diag, templates, granularity=granularity, attempt=attempt)
            assert [m["role"] for m in messages] == ["system", "user"]
            shown = "\n".join(m["content"] for m in messages).replace(task.prompt.strip(), "")
            assert _gold_is_hidden(diag, shown), (task.id, task.answer, shown)
        checked += 1
        if checked == 200:
            break
    assert checked == 200


def test_reflection_messages_show_the_diagnosis(tool_catalog, templates) -> None:
    task = tool_catalog["tooluse.calc_chain"].instance(2)
    wrong = Attempt("12", False, "the final answer does not match", "assistant: \\boxed{12}")
    attempts = [wrong, Attempt(None, False, "no final answer found", "assistant: hmm"), wrong]
    diag = diagnose(task, attempts, catalog=tool_catalog)
    user = reflection_messages(diag, templates, max_questions=2)[1]["content"]
    assert task.prompt in user and "- wrong, answered 12: the final answer does not match (2 attempts)\n" in user
    assert "- wrong, gave no answer: no final answer found\n" in user and "12, given 2 times" in user
    # the transcript of an attempt giving the most common wrong answer shows where it went wrong
    assert "What a wrong attempt did: assistant: \\boxed{12}\n" in user
    assert "at most 2 short" in reflection_messages(diag, templates, max_questions=2)[0]["content"]
    once = reflection_messages(dataclasses.replace(diag, common_wrong=("12", 1)), templates)[1]["content"]
    assert "12, given once" in once
    rollout = reflection_messages(diag, templates, granularity="rollout", attempt=1)[1]["content"]
    assert "What it did: assistant: hmm" in rollout and "answered 12" not in rollout
    with pytest.raises(ValueError, match="out of range"):
        reflection_messages(diag, templates, granularity="rollout", attempt=5)
    with pytest.raises(ValueError, match="granularity='rollout'"):
        reflection_messages(diag, templates, attempt=0)


# ------------------------------------------------------------------------------------------------- templates


def test_teacher_messages_append_only(templates) -> None:
    opening = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is {y}? 3 + 4"}]
    with_hint = teacher_messages(opening, "Did you add?", templates)
    null = teacher_messages(opening, None, templates)
    assert opening[1]["content"] == "What is {y}? 3 + 4"  # not mutated
    for out in (with_hint, null):
        assert out[0] == opening[0] and [m["role"] for m in out] == ["system", "user"]
        assert out[1]["content"].startswith(opening[1]["content"])
    assert with_hint[1]["content"].endswith("Did you add?")
    assert NULL_HINT in null[1]["content"]
    assert null[1]["content"][len(opening[1]["content"]):] == with_hint[1]["content"][
        len(opening[1]["content"]):].replace("Did you add?", NULL_HINT)
    with pytest.raises(ValueError, match="no user message"):
        teacher_messages([{"role": "system", "content": "x"}], None, templates)


def copy_templates(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for path in PROMPTS_DIR.glob("*.txt"):
        (folder / path.name).write_text(path.read_text())
    return folder


def test_templates_load_and_fail_with_the_file_and_placeholder(tmp_path: Path) -> None:
    shipped = PromptTemplates.load()
    assert shipped.teacher_context.startswith("{prompt}") and "{hint}" in shipped.teacher_context
    folder = copy_templates(tmp_path / "p")
    group = folder / "reflect_group.txt"
    original = group.read_text()

    group.write_text(original.replace("{peer}", "{peers}"))
    with pytest.raises(ValueError, match=r"reflect_group\.txt: unknown placeholder \{peers\}"):
        PromptTemplates.load(str(folder))
    group.write_text(original.replace("{peer}", "none"))
    with pytest.raises(ValueError, match=r"reflect_group\.txt: missing placeholder \{peer\}"):
        PromptTemplates.load(str(folder))
    group.write_text(original.replace("[user]\n", ""))
    with pytest.raises(ValueError, match=r"reflect_group\.txt: expected a '\[system\]' line"):
        PromptTemplates.load(str(folder))
    group.write_text(original)
    (folder / "teacher_context.txt").write_text("Hint: {hint}\n\n{prompt}\n")
    with pytest.raises(ValueError, match=r"teacher_context\.txt: must start with \{prompt\}"):
        PromptTemplates.load(str(folder))
    (folder / "teacher_context.txt").unlink()
    with pytest.raises(ValueError, match=r"cannot read prompt template .*teacher_context\.txt"):
        PromptTemplates.load(str(folder))


# ------------------------------------------------------------------------------------- Reflector, real hf engine


class CountingEngine:
    """The real engine, with each generate call's batch size and params recorded (not a mock: it delegates)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.calls: list[tuple[int, SamplingParams]] = []

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params))
        return self.engine.generate(prompts, params)


HINT_TEXT = "<hint>Did you copy the calculator's result exactly into the second call?</hint>"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A small random Qwen2 (no warm start) and its tokenizer, loaded the way a real model is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_model(
        tmp_path_factory.mktemp("reflection") / "tiny", [HINT_TEXT, "What is y? Did you check the units?"] * 3,
        seed=0, vocab_size=512, num_hidden_layers=1, hidden_size=64, num_attention_heads=1, num_key_value_heads=1,
        intermediate_size=128,
    )
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _jobs(tool_catalog) -> list[tuple[Diagnosis, int | None]]:
    diags = []
    for index in range(3):
        task = tool_catalog["tooluse.calc_chain"].instance(index)
        attempts = [Attempt("12", False, "the final answer does not match", "assistant: \\boxed{12}"),
                    Attempt(None, False, "no final answer found", "assistant: hmm")]
        diags.append(diagnose(task, attempts, catalog=tool_catalog))
    return [(diags[0], None), (diags[1], None), (diags[2], None), (diags[0], 1)]


def test_reflector_random_model_gets_no_hint_after_resamples(tiny_model, tool_catalog) -> None:
    model, tokenizer = tiny_model
    engine = CountingEngine(make_engine("hf", model=model, tokenizer=tokenizer))
    cfg = ReflectionConfig(hint_max_tokens=12, resamples=2, temperature=1.0)
    jobs = _jobs(tool_catalog)
    results = Reflector(engine, tokenizer, cfg).reflect(jobs, seed=5)
    assert len(results) == len(jobs) and all(isinstance(r, HintResult) for r in results)
    for result in results:
        assert result.hint is None and result.tokens == 0
        assert len(result.samples) == len(result.verdicts) == 1 + cfg.resamples
        assert all(v == LeakVerdict(False, "no <hint> tag") for v in result.verdicts), result.verdicts
        assert result.prompt.startswith("<|im_start|>system\nYou are a tutor.")
    assert [n for n, _ in engine.calls] == [len(jobs)] * (1 + cfg.resamples)
    first = engine.calls[0][1]
    assert (first.temperature, first.max_new_tokens, first.stop_strings, first.seed) == (1.0, 12, ("</hint>",), 5)
    assert len({params.seed for _, params in engine.calls}) == 1 + cfg.resamples


def test_reflector_uses_prompts_dir_and_rollout_granularity(tiny_model, tool_catalog, tmp_path: Path) -> None:
    model, tokenizer = tiny_model
    folder = copy_templates(tmp_path / "custom")
    rollout = folder / "reflect_rollout.txt"
    rollout.write_text(rollout.read_text().replace("You are a tutor.", "You are a strict critic."))
    engine = CountingEngine(make_engine("hf", model=model, tokenizer=tokenizer))
    cfg = ReflectionConfig(hint_max_tokens=8, resamples=0, prompts_dir=str(folder))
    results = Reflector(engine, tokenizer, cfg).reflect(_jobs(tool_catalog), seed=0)
    assert "strict critic" in results[3].prompt and "strict critic" not in results[0].prompt
    assert [n for n, _ in engine.calls] == [4] and all(len(r.samples) == 1 for r in results)


def test_reflector_shortens_details_to_fit_the_context_or_skips(tiny_model, tool_catalog, templates) -> None:
    model, tokenizer = tiny_model
    diag, _ = _jobs(tool_catalog)[0]

    def length(detail_chars: int) -> int:
        messages = reflection_messages(diag, templates, detail_chars=detail_chars)
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))

    cfg = ReflectionConfig(hint_max_tokens=8, resamples=0)
    assert length(0) < length(240)
    fits_without_details = CountingEngine(make_engine("hf", model=model, tokenizer=tokenizer,
                                                      max_model_len=length(0) + 8))
    [short] = Reflector(fits_without_details, tokenizer, cfg).reflect([(diag, None)], seed=0)
    assert "(omitted)" in short.prompt and len(short.samples) == 1
    too_small = CountingEngine(make_engine("hf", model=model, tokenizer=tokenizer, max_model_len=length(0)))
    [skipped] = Reflector(too_small, tokenizer, cfg).reflect([(diag, None)], seed=0)
    assert skipped.hint is None and skipped.samples == [] and too_small.calls == []


def test_reflection_jobs_follow_the_granularity(tool_catalog) -> None:
    diags = [diag for diag, attempt in _jobs(tool_catalog) if attempt is None]
    assert reflection_jobs(diags, "group") == [(d, None) for d in diags]
    assert reflection_jobs(diags, "rollout") == [(d, i) for d in diags for i in (0, 1)]
    with pytest.raises(ValueError, match="'group' or 'rollout'"):
        reflection_jobs(diags, "token")


def _overfit_to_hint(model, tokenizer, texts: list[str]) -> bool:
    """Teach the tiny model to answer these rendered reflection prompts with HINT_TEXT: full-batch Adam (prompts
    left-padded, as the engine pads them) until every target token is the argmax with a small loss."""
    prompts = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    target = tokenizer(HINT_TEXT, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    width = max(map(len, prompts)) + len(target)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p) - len(target)) + p + target for p in prompts])
    mask = torch.tensor([[0] * (width - len(p) - len(target)) + [1] * (len(p) + len(target)) for p in prompts])
    labels = ids.masked_fill(torch.arange(width) < width - len(target), -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), labels=labels)
        predicted = out.logits[:, -len(target) - 1 : -1].argmax(-1)
        if bool((predicted == ids[:, -len(target):]).all()) and out.loss.item() < 0.05:
            model.eval()
            return True
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return False


def test_reflector_accepts_a_good_hint_and_resamples_only_rejected_jobs(tiny_model, tool_catalog, templates) -> None:
    model, tokenizer = copy.deepcopy(tiny_model[0]), tiny_model[1]
    jobs = _jobs(tool_catalog)
    # A job whose reference this hint copies: it is rejected, resampled once, rejected again.
    copied = dataclasses.replace(jobs[0][0], reference="Did you copy the calculator's result exactly into it?")
    assert _overfit_to_hint(model, tokenizer, [
        tokenizer.apply_chat_template(
            reflection_messages(diag, templates, granularity="group" if a is None else "rollout", attempt=a),
            add_generation_prompt=True, tokenize=False, return_dict=False,
        )
        for diag, a in [*jobs, (copied, None)]
    ])
    engine = CountingEngine(make_engine("hf", model=model, tokenizer=tokenizer))
    reflector = Reflector(engine, tokenizer, ReflectionConfig(hint_max_tokens=40, resamples=1, temperature=1e-3))
    results = reflector.reflect([*jobs, (copied, None)], seed=1)
    hint_tokens = len(tokenizer(HINT_TEXT, add_special_tokens=False).input_ids)
    for result in results[:4]:
        assert result.hint == extract_hint(HINT_TEXT) and result.verdicts == [LeakVerdict(True, "ok")]
        assert result.samples == [HINT_TEXT] and result.tokens == hint_tokens
    assert results[4].hint is None and len(results[4].samples) == 2
    assert all(v.reason.startswith("copies an 8-gram of the reference") for v in results[4].verdicts)
    assert [n for n, _ in engine.calls] == [5, 1]
