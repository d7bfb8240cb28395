"""Tests of ``amrsd-train inspect``: records validate with errors naming file and field, the page escapes every token
and is self-contained, the CLI's exit codes, and a real browser renders it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from amrsd_train.inspect_page import (
    InspectRecord,
    InspectRecordError,
    available_steps,
    load_record,
    record_path,
    render_html,
    token_background,
    write_inspect_page,
)

REPO = Path(__file__).resolve().parents[1]

SYSTEM = "<|im_start|>system\nYou are a careful assistant. Call tools with <tool_call>{json}</tool_call>.<|im_end|>\n"


def _prompt_rows(user: str) -> list[list]:
    return [
        [SYSTEM, "prompt", -1, None, None, None],
        ["<|im_start|>user\n", "prompt", -1, None, None, None],
        [user, "prompt", -1, None, None, None],
        ["<|im_end|>\n<|im_start|>assistant\n", "prompt", -1, None, None, None],
    ]


def _assistant_rows(pieces: list[str], turn: int, adv: float, ratios: list[float], cig: bool = True) -> list[list]:
    """Assistant rows whose A_hat is ``adv * ratio``; CIG null (as in grpo) when ``cig`` is False."""
    rows = []
    for piece, ratio in zip(pieces, ratios, strict=True):
        gate = round(ratio - 1.0, 3)
        rows.append([piece, "assistant", turn, adv * ratio, (0.4 * gate if cig else None), (gate if cig else None)])
    return rows


def _tool_rows(result: str) -> list[list]:
    return [
        ["\n<|im_start|>user\n<tool_response>\n", "tool", 0, None, None, None],
        [result, "tool", 0, None, None, None],
        ["\n</tool_response><|im_end|>\n<|im_start|>assistant\n", "tool", 0, None, None, None],
    ]


CALL = ["<tool_call>", '\n{"name": "calc", ', '"arguments": {"expr": "3 * (2 + 4) - 1"}}', "\n</tool_call>",
        "<|im_end|>"]
ANSWER = ["The ", "result ", "is ", "<answer>", "17", "</answer>", "<|im_end|>"]


def _rollout(adv: float, correct: bool, answer: list[str], ratios_answer: list[float], cig: bool = True) -> dict:
    tokens = (
        _prompt_rows("Compute 3 * (2 + 4) - 1 with the calculator & report it in <answer></answer>.")
        + _assistant_rows(CALL, 0, adv, [1.0, 1.4, 1.9, 1.0, 1.0], cig)
        + _tool_rows('{"value": 17}')
        + _assistant_rows(answer, 1, adv, ratios_answer, cig)
    )
    return {
        "reward": 1.0 if correct else 0.0,
        "correct": correct,
        "adv": adv,
        "extracted": answer[4],
        "feedback": "correct" if correct else "expected 17, got 18",
        "tokens": tokens,
    }


def make_record(step: int) -> dict:
    wrong = ["The ", "result ", "is ", "<answer>", "18", "</answer>", "<|im_end|>"]
    group_with_hint = {
        "task_id": "tooluse.calc_chain/123",
        "prompt": "Compute 3 * (2 + 4) - 1 with the calculator & report it in <answer></answer>.",
        "diagnosis": "You attempted this task 4 times.\nAttempt 1 <correct>...\nWrite a <hint> that helps.",
        "hint": "Evaluate the parentheses first, then multiply.",
        "hint_samples": [
            {"text": "<hint>The answer is 17</hint>", "ok": False, "reason": "contains the gold answer '17'"},
            {"text": "<hint>Evaluate the parentheses first, then multiply.</hint>", "ok": True, "reason": None},
        ],
        "rollouts": [
            _rollout(0.866, True, ANSWER, [1.0, 1.0, 1.0, 1.2, 2.0, 1.2, 1.0]),
            _rollout(-0.866, False, wrong, [1.0, 1.0, 1.0, 1.5, 2.4, 1.0, 1.0]),
        ],
    }
    all_correct = {
        "task_id": "tooluse.calc_chain/7",
        "prompt": "What is 2 + 2?\nUse the calculator.",
        "diagnosis": None,
        "hint": None,
        "hint_samples": [{"text": "<hint>4</hint>", "ok": False, "reason": "contains the gold answer '4'"}],
        "rollouts": [_rollout(0.0, True, ANSWER, [1.0] * 7), _rollout(0.0, True, ANSWER, [1.0] * 7, cig=False)],
    }
    grpo_style = {
        "task_id": "math.arith/5",
        "prompt": "Tabs\tand   spaces must survive.",
        "rollouts": [_rollout(0.5, True, ANSWER, [1.0] * 7, cig=False), _rollout(-0.5, False, wrong, [1.0] * 7)],
    }
    return {"step": step, "algorithm": "amrsd", "beta": 0.5, "groups": [group_with_hint, all_correct, grpo_style]}


def write_record(run_dir: Path, step: int, record: dict | None = None) -> Path:
    path = record_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_record(step) if record is None else record))
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    write_record(tmp_path, 3)
    write_record(tmp_path, 12)
    return tmp_path


class _PageText(HTMLParser):
    """The page's text as a browser shows it, minus the ↵ newline markers; fails on unbalanced tags."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.open: list[tuple[str, bool]] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append((tag, ("class", "nl") in attrs))

    def handle_endtag(self, tag):
        assert self.open and self.open[-1][0] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data):
        in_style = any(tag == "style" for tag, _ in self.open)
        in_marker = any(is_nl for _, is_nl in self.open)
        if not (in_style or in_marker):
            self.text.append(data)


def page_text(page: str) -> str:
    parser = _PageText()
    parser.feed(page)
    parser.close()
    assert [tag for tag, _ in parser.open] == [], "unclosed tags"
    return "".join(parser.text)


def test_page_is_well_formed_self_contained_and_shows_every_token_escaped(run_dir: Path) -> None:
    out = write_inspect_page(run_dir, step=3)
    assert out == run_dir / "inspect" / "step_000003.html"
    page = out.read_text(encoding="utf-8")
    text = page_text(page)
    record = make_record(3)
    for group in record["groups"]:
        assert group["prompt"] in text
        for rollout in group["rollouts"]:
            for row in rollout["tokens"]:
                assert row[0] in text, f"token {row[0]!r} is not shown"
    assert "<tool_call>" not in page and "<|im_end|>" not in page and "<answer>" not in page
    assert "&lt;tool_call&gt;" in page and "&lt;|im_end|&gt;" in page
    assert "contains the gold answer &#x27;17&#x27;" in page
    assert "http" not in page.lower() and "<script" not in page.lower() and "<link" not in page.lower()


def test_page_colours_tokens_by_sign_and_amplification(run_dir: Path) -> None:
    page = write_inspect_page(run_dir, step=3).read_text(encoding="utf-8")
    assert token_background(2.0, 1.0) in page and token_background(-2.0, -1.0) in page
    assert token_background(0.0, 0.0) in page
    assert 'data-tip="A_hat +1.732   A_i +0.866  (×2.00)\nCIG +0.400   gate 1.000   turn 1"' in page
    assert "CIG —   gate —" in page
    assert page.count('class="rollout"') == 6
    assert page.count('<details class="seg prompt">') == 6, "every rollout's prompt is folded (no open attribute)"
    assert page.count('class="seg tool"') == 6
    assert 'class="turn">turn 0<' in page and 'class="turn">turn 1<' in page


def test_token_background_hue_is_the_sign_and_depth_the_amplification() -> None:
    def alpha(css: str) -> float:
        return float(css.rsplit(",", 1)[1].rstrip(")"))

    assert token_background(0.5, 0.5).startswith("rgba(22,163,74,")
    assert token_background(-0.5, -0.5).startswith("rgba(220,38,38,")
    assert token_background(0.7, 0.0) == token_background(None, 0.0) == "rgba(113,113,122,0.18)"
    assert alpha(token_background(0.1, 0.5)) < alpha(token_background(0.5, 0.5)) < alpha(token_background(1.0, 0.5))
    assert token_background(None, 0.5) == token_background(0.5, 0.5)
    assert token_background(5.0, 1.0) == token_background(2.0, 1.0), "amplification beyond the cap looks alike"


def test_load_record_defaults_to_the_latest_step(run_dir: Path) -> None:
    assert available_steps(run_dir) == [3, 12]
    assert load_record(run_dir).step == 12
    assert load_record(run_dir, 3).groups[0].rollouts[0].tokens[4].kind == "assistant"


def test_missing_step_lists_the_available_ones(run_dir: Path) -> None:
    with pytest.raises(InspectRecordError, match=r"no inspect record for step 7 .*available steps: 3, 12"):
        load_record(run_dir, 7)


def test_run_without_records_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(InspectRecordError, match="inspect_groups > 0"):
        load_record(tmp_path)


def test_malformed_record_names_file_and_field(tmp_path: Path) -> None:
    record = make_record(5)
    record["groups"][0]["rollouts"][1]["tokens"][6][1] = "assistent"
    del record["groups"][1]["rollouts"][0]["adv"]
    path = write_record(tmp_path, 5, record)
    with pytest.raises(InspectRecordError) as err:
        load_record(tmp_path)
    message = str(err.value)
    assert str(path) in message
    assert "groups[0].rollouts[1].tokens[6].kind: Input should be 'prompt', 'assistant' or 'tool'" in message
    assert "groups[1].rollouts[0].adv: Field required" in message


def test_step_field_must_match_the_file_name(tmp_path: Path) -> None:
    write_record(tmp_path, 5, make_record(6))
    with pytest.raises(InspectRecordError, match="field step is 6, but the file name says step 5"):
        load_record(tmp_path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "amrsd_train", "inspect", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_writes_the_latest_page_and_a_chosen_step(run_dir: Path, tmp_path: Path) -> None:
    latest = _cli(str(run_dir))
    assert latest.returncode == 0, latest.stderr
    assert (run_dir / "inspect" / "step_000012.html").is_file()
    out = tmp_path / "pages" / "three.html"
    chosen = _cli(str(run_dir), "--step", "3", "--out", str(out))
    assert chosen.returncode == 0, chosen.stderr
    assert f"wrote {out}" in chosen.stdout
    assert "Credit assignment at step 3" in out.read_text(encoding="utf-8")


def test_cli_exits_2_naming_the_problem(run_dir: Path) -> None:
    missing = _cli(str(run_dir), "--step", "4")
    assert missing.returncode == 2
    assert "available steps: 3, 12" in missing.stderr
    record = make_record(20)
    record["groups"][2]["rollouts"][0]["tokens"][0] = ["only text"]
    write_record(run_dir, 20, record)
    malformed = _cli(str(run_dir))
    assert malformed.returncode == 2
    assert "step_000020.json" in malformed.stderr
    assert "groups[2].rollouts[0].tokens[0].kind: Field required" in malformed.stderr
    assert "Traceback" not in malformed.stderr


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None and not os.environ.get("CI"):
        pytest.skip("chromium is not installed (bash scripts/setup.sh --dev installs it as root; CI requires it)")
    assert path is not None, "chromium is missing in CI: scripts/setup.sh --dev installs it"
    return path


@pytest.mark.slow
def test_chromium_renders_the_page(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    chromium = _chromium()
    page = write_inspect_page(run_dir, step=3)
    png = tmp_path / "page.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}", "--window-size=1280,2000",
         page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    assert png.stat().st_size > 20_000
    with Image.open(png) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) one colour"


def test_render_html_escapes_the_record_fields() -> None:
    record = InspectRecord.model_validate(make_record(1) | {"algorithm": "<b>x</b>"})
    page = render_html(record)
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
