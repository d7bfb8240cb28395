"""Tool-call parsing and rendering (Hermes/Qwen ``<tool_call>`` format)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amrsd_envs.toolcalls import CLOSE_TAG, OPEN_TAG, ParsedToolCalls, ToolCall, parse_tool_calls, render_tool_calls

# -- examples ---------------------------------------------------------------------------------------------


def test_single_call_with_text_around():
    text = 'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "7/3"}}\n</tool_call>\nDone.'
    parsed = parse_tool_calls(text)
    assert parsed.calls == [ToolCall("calculator", {"expression": "7/3"})]
    assert parsed.errors == []
    assert parsed.content == "Let me compute.\n\nDone."


def test_several_calls_and_text_between():
    text = (
        'a <tool_call>{"name": "x", "arguments": {"i": 1}}</tool_call> b '
        '<tool_call>{"name": "y", "arguments": {}}</tool_call> c'
    )
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.calls] == ["x", "y"]
    assert parsed.calls[0].arguments == {"i": 1}
    assert parsed.content == "a  b  c"


def test_no_calls_is_plain_content():
    parsed = parse_tool_calls("  The answer is \\boxed{4}.  ")
    assert parsed == ParsedToolCalls(content="The answer is \\boxed{4}.", calls=[], errors=[])


def test_close_tag_inside_a_json_string_argument():
    code = 'print("</tool_call>")\nprint("<tool_call>{}</tool_call>")'
    text = f"<tool_call>{json.dumps({'name': 'python', 'arguments': {'code': code}})}</tool_call>"
    parsed = parse_tool_calls(text)
    assert parsed.errors == []
    assert parsed.calls == [ToolCall("python", {"code": code})]


def test_bad_json_keeps_other_calls_and_names_the_index():
    text = (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "b", "arguments": {oops}}</tool_call>'
        '<tool_call>{"name": "c", "arguments": {"k": [1, 2]}}</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.calls] == ["a", "c"]
    assert len(parsed.errors) == 1
    assert parsed.errors[0].startswith("tool call #2:")
    assert "invalid JSON" in parsed.errors[0]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"arguments": {}}', 'missing "name"'),
        ('{"name": 5, "arguments": {}}', '"name" must be a string'),
        ('{"name": "", "arguments": {}}', "non-empty"),
        ('{"name": "f", "arguments": [1, 2]}', '"arguments" must be a JSON object'),
        ('{"name": "f", "arguments": "not json"}', "not valid JSON"),
        ('{"name": "f", "arguments": "[1]"}', '"arguments" must be a JSON object'),
        ('["f", {}]', "expected a JSON object"),
        ('{"name": "f", "parameters": {"x": 1}}', 'missing "arguments" (found key(s) [\'parameters\'])'),
        ('{"name": "f", "id": "c1", "args": {"x": 1}}', 'missing "arguments" (found key(s) [\'args\'])'),
        ('{"id": "call_1", "type": "function", "arguments": {}}', 'missing "name"'),
        ('{"name": "f", "id": "call_1", "arguments": 3}', '"arguments" must be a JSON object'),
        ('{"name": "f", "arguments": {}} trailing', "unexpected text after the JSON object"),
    ],
)
def test_malformed_calls_give_one_error_each(body, fragment):
    parsed = parse_tool_calls(f"before <tool_call>{body}</tool_call> after")
    assert parsed.calls == []
    assert len(parsed.errors) == 1
    assert fragment in parsed.errors[0]
    assert parsed.errors[0].startswith("tool call #1")
    assert parsed.content == "before  after"


def test_arguments_as_json_string_are_decoded():
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>')
    assert parsed.calls == [ToolCall("f", {"x": 1})]
    assert parsed.errors == []


@pytest.mark.parametrize("body", ['{"name": "f"}', '{"name": "f", "arguments": null}'])
def test_missing_or_null_arguments_mean_empty(body):
    parsed = parse_tool_calls(f"<tool_call>{body}</tool_call>")
    assert parsed.calls == [ToolCall("f", {})]


# -- extra keys, as vLLM's hermes parser reads calls ------------------------------------------------------
# vLLM (vllm/tool_parsers/hermes_tool_parser.py, Hermes2ProToolParser.extract_tool_calls) does json.loads on each
# <tool_call> body and reads only obj["name"] and obj["arguments"]: any other top-level key is ignored; a missing
# "name" (KeyError) or a non-string one (FunctionCall validation) drops the call. The bodies below are adapted from
# vLLM's tests/tool_parsers/test_hermes_tool_parser.py (test_hermes_parser_streaming_failure_case_bug_19056,
# test_hermes_parser_streaming, test_hermes_streaming_content_then_tool_call_with_stream_interval) with the
# metadata keys models emit added.


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '{"name": "final_answer", "arguments": {"trigger": true}, "id": "call_1"}',
            ToolCall("final_answer", {"trigger": True}),
        ),
        (
            '{"id": "call_1", "type": "function", "name": "get_weather", "arguments": {"city": "NYC"}}',
            ToolCall("get_weather", {"city": "NYC"}),
        ),
        (
            '{"name": "get_current_temperature",\n"arguments": {"location":\n"San Francisco, California, United '
            'States", "unit": "celsius"}, "index": 0}',
            ToolCall(
                "get_current_temperature",
                {"location": "San Francisco, California, United States", "unit": "celsius"},
            ),
        ),
        ('{"name": "f", "arguments": {"x": 1}, "thought": "because"}', ToolCall("f", {"x": 1})),
        ('{"name": "f", "arguments": "{\\"x\\": 1}", "id": "c"}', ToolCall("f", {"x": 1})),
        ('{"name": "f", "id": "call_9", "type": "function"}', ToolCall("f", {})),
    ],
)
def test_extra_top_level_keys_are_ignored_like_vllm(body, expected):
    parsed = parse_tool_calls(f"Sure, let me check the weather.<tool_call>{body}</tool_call>")
    assert parsed.errors == []
    assert parsed.calls == [expected]
    assert parsed.content == "Sure, let me check the weather."


def test_extra_keys_do_not_hide_the_next_call():
    text = (
        '<tool_call>{"name": "a", "arguments": {}, "id": "call_1"}</tool_call>\n'
        '<tool_call>{"type": "function", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "c", "arguments": {"k": 1}, "type": "function"}</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.calls] == ["a", "c"]
    assert len(parsed.errors) == 1 and parsed.errors[0].startswith("tool call #2:")


def test_unclosed_final_call_with_valid_json_is_accepted():
    parsed = parse_tool_calls('Thinking. <tool_call>\n{"name": "f", "arguments": {"a": "b"}}\n')
    assert parsed.calls == [ToolCall("f", {"a": "b"})]
    assert parsed.errors == []
    assert parsed.content == "Thinking."


def test_unclosed_final_call_with_truncated_json_is_an_error():
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": ')
    assert parsed.calls == []
    assert len(parsed.errors) == 1
    assert "unclosed" in parsed.errors[0]


def test_unclosed_call_followed_by_another_call_does_not_swallow_it():
    parsed = parse_tool_calls('<tool_call>{"name": "f", <tool_call>{"name": "g", "arguments": {}}</tool_call>')
    assert parsed.calls == [ToolCall("g", {})]
    assert len(parsed.errors) == 1 and parsed.errors[0].startswith("tool call #1")


def test_deeply_nested_json_is_an_error_not_a_crash():
    parsed = parse_tool_calls("<tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>")
    assert parsed.calls == []
    assert len(parsed.errors) == 1


def test_integer_over_python_digit_limit_is_an_error_not_a_crash():
    huge = "1" * 5000
    parsed = parse_tool_calls(f'<tool_call>{{"name": "f", "arguments": {{"x": {huge}}}}}</tool_call> tail')
    assert parsed.calls == []
    assert len(parsed.errors) == 1 and "cannot parse the JSON" in parsed.errors[0]
    assert parsed.content == "tail"


def test_parse_rejects_non_str():
    with pytest.raises(TypeError, match="expects str"):
        parse_tool_calls(b"<tool_call>")  # type: ignore[arg-type]


def test_render_layout_matches_qwen_template():
    text = render_tool_calls([ToolCall("f", {"x": "é"}), ToolCall("g", {})])
    assert text == (
        '<tool_call>\n{"name": "f", "arguments": {"x": "é"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>'
    )
    assert render_tool_calls([]) == ""


def test_render_rejects_non_calls():
    with pytest.raises(TypeError, match="ToolCall"):
        render_tool_calls([{"name": "f", "arguments": {}}])  # type: ignore[list-item]


# -- properties -------------------------------------------------------------------------------------------

_tricky_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from([OPEN_TAG, CLOSE_TAG, f"{CLOSE_TAG}{OPEN_TAG}", '"}', "\\", "\n", '{"name": "x"}']),
)
_strings = st.lists(_tricky_text, max_size=4).map("".join)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    _strings,
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_strings, children, max_size=4),
    ),
    max_leaves=12,
)
_calls = st.builds(
    ToolCall,
    name=_strings.filter(bool),
    arguments=st.dictionaries(_strings, _json_values, max_size=5),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_calls, max_size=4))
def test_render_then_parse_is_identity(calls):
    parsed = parse_tool_calls(render_tool_calls(calls))
    assert parsed.errors == []
    assert parsed.calls == calls
    assert parsed.content == ""


_fragments = st.sampled_from(
    [
        OPEN_TAG, CLOSE_TAG, "<tool_call", "tool_call>", "{", "}", "[", "]", '"', ":", ",", "\\", " ", "\n",
        '"name"', '"arguments"', '"f"', "null", "1e999", "-", "0", "true", '{"name": "f", "arguments": {}}',
        '{"name": "f", "arguments": "{}"}', "\ud7ff", "é", "9" * 4400,
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(_fragments, st.text(max_size=5)), max_size=30).map("".join)))
def test_parse_never_raises_and_accounts_for_every_block(text):
    parsed = parse_tool_calls(text)
    assert isinstance(parsed.content, str)
    assert all(isinstance(c, ToolCall) and isinstance(c.arguments, dict) and c.name for c in parsed.calls)
    # Every opening tag the parser consumed became exactly one call or one error.
    assert len(parsed.calls) + len(parsed.errors) <= text.count(OPEN_TAG)
    if OPEN_TAG not in text:
        assert parsed.calls == [] and parsed.errors == [] and parsed.content == text.strip()


@settings(max_examples=200, deadline=None)
@given(_calls, st.text().filter(lambda s: OPEN_TAG not in s), st.text().filter(lambda s: OPEN_TAG not in s))
def test_text_around_a_rendered_call_is_kept(call, before, after):
    parsed = parse_tool_calls(f"{before}{render_tool_calls([call])}{after}")
    assert parsed.calls == [call]
    assert parsed.errors == []
    assert parsed.content == f"{before}{after}".strip()


def test_malformed_blocks_past_the_cap_are_reported_in_one_error():
    from amrsd_envs.toolcalls import MAX_MALFORMED_BLOCKS, OPEN_TAG, parse_tool_calls

    good = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
    parsed = parse_tool_calls(good + (OPEN_TAG + "{") * (MAX_MALFORMED_BLOCKS + 10))
    assert [c.name for c in parsed.calls] == ["calculator"]
    assert len(parsed.errors) == MAX_MALFORMED_BLOCKS + 1
    assert parsed.errors[-1] == f"10 more <tool_call> block(s) not parsed after {MAX_MALFORMED_BLOCKS} malformed ones"
