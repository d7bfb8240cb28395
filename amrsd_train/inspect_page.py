"""``amrsd-train inspect RUN_DIR [--step N] [--out FILE]``: one self-contained HTML page of a run's credit assignment.

For ``inspect_groups`` sampled task groups per logged step the trainer writes ``RUN_DIR/inspect/step_NNNNNN.json``
(:func:`record_path`; schema: :class:`InspectRecord`). This module validates one such record and renders it: per
group the task prompt, the reflection prompt the policy saw (collapsed), the accepted hint or each rejected hint
sample with its reason, then each rollout with its reward, A_i and token stream. Assistant tokens are coloured by
``A_hat / A_i``: the hue is the sign of A_i (green > 0, red < 0, grey = 0), the depth the per-token amplification
(x1 is plain GRPO; deeper is amplified, paler damped). Hovering a token shows A_hat, CIG and gate.

The page has inline CSS only: no script, no external URL, every text HTML-escaped (tokens carry ``<tool_call>``
and ``<|im_end|>``), so it can be mailed or attached to an issue as one file.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import sys
from itertools import groupby
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "HintSample",
    "InspectGroup",
    "InspectRecord",
    "InspectRecordError",
    "InspectRollout",
    "TokenRow",
    "advantage_ratio",
    "available_steps",
    "load_record",
    "main",
    "record_path",
    "render_html",
    "token_background",
    "write_inspect_page",
]

TokenKind = Literal["prompt", "assistant", "tool"]


class TokenRow(NamedTuple):
    """One token as the trainer writes it, the JSON array ``[text, kind, turn, a_hat, cig, gate]``.

    ``kind``: "prompt" (system + user prompt), "assistant" (sampled), "tool" (tool results and the chat-template
    glue between turns). ``turn``: the assistant turn index, -1 outside turns. ``a_hat``, ``cig``, ``gate``: the
    token advantage, the CIG and the gate, on assistant tokens only and null where the algorithm has none.
    """

    text: str
    kind: TokenKind
    turn: int
    a_hat: float | None
    cig: float | None
    gate: float | None


class _Record(BaseModel):
    # a key the page does not know means the trainer's writer and this reader disagree: fail, naming it
    model_config = ConfigDict(extra="forbid")


class HintSample(_Record):
    text: str = Field(description="The raw hint generation, e.g. '<hint>...</hint>'.")
    ok: bool = Field(description="Whether the hint passed the leak check and was accepted.")
    reason: str | None = Field(None, description="Why it was rejected (null or empty when accepted).")


class InspectRollout(_Record):
    reward: float = Field(description="The verifier's reward.")
    correct: bool = Field(description="Whether the final answer was correct.")
    adv: float = Field(description="The rollout advantage A_i.")
    extracted: str | None = Field(None, description="The answer the verifier extracted (null: none found).")
    feedback: str | None = Field(None, description="The verifier's feedback line.")
    tokens: list[TokenRow] = Field(description="The whole episode, prompt to last token, in order.")


class InspectGroup(_Record):
    task_id: str = Field(description="'family/index', e.g. 'tooluse.calc_chain/123'.")
    prompt: str = Field(description="The task's user prompt.")
    diagnosis: str | None = Field(None, description="The rendered reflection prompt the policy saw, or null.")
    hint: str | None = Field(None, description="The accepted hint text, or null.")
    hint_samples: list[HintSample] = Field(default_factory=list, description="Every hint generation, in order.")
    rollouts: list[InspectRollout] = Field(description="The group's rollouts.")


class InspectRecord(_Record):
    step: int = Field(ge=0, description="The training step the record was logged at.")
    algorithm: str = Field(description="The config's algorithm, e.g. 'amrsd' or 'grpo'.")
    beta: float | None = Field(None, description="The modulation strength beta at this step (null: none).")
    groups: list[InspectGroup] = Field(description="The sampled task groups.")


class InspectRecordError(ValueError):
    """A missing, unreadable or malformed inspect record; the message names the file and the field."""


# ------------------------------------------------------------------------------------------------ loading records

_RECORD_NAME = re.compile(r"step_(\d+)\.json")


def record_path(run_dir: str | Path, step: int) -> Path:
    """Where the trainer writes the record of ``step``: ``RUN_DIR/inspect/step_NNNNNN.json``."""
    return Path(run_dir) / "inspect" / f"step_{step:06d}.json"


def available_steps(run_dir: str | Path) -> list[int]:
    """The steps that have a record under ``RUN_DIR/inspect/``, ascending."""
    inspect_dir = Path(run_dir) / "inspect"
    if not inspect_dir.is_dir():
        return []
    matches = (_RECORD_NAME.fullmatch(p.name) for p in inspect_dir.iterdir())
    return sorted(int(m.group(1)) for m in matches if m)


def load_record(run_dir: str | Path, step: int | None = None) -> InspectRecord:
    """The validated record of ``step`` (default: the latest) of the run in ``run_dir``.

    Raises :class:`InspectRecordError` when there is no record (listing the steps that have one), when the file is
    not JSON, or when a field is missing or has the wrong type (naming the file and the field).
    """
    steps = available_steps(run_dir)
    if not steps:
        raise InspectRecordError(
            f"no inspect records in {Path(run_dir) / 'inspect'}: training writes step_NNNNNN.json there at each "
            "logged step when inspect_groups > 0"
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise InspectRecordError(
            f"no inspect record for step {step} in {Path(run_dir) / 'inspect'}; "
            f"available steps: {', '.join(map(str, steps))}"
        )
    return _read_record(record_path(run_dir, step), step)


def _read_record(path: Path, step: int) -> InspectRecord:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InspectRecordError(f"{path}: not valid JSON: {exc}") from None
    try:
        record = InspectRecord.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_field_name(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InspectRecordError(f"{path}: not a valid inspect record:\n{problems}") from None
    if record.step != step:
        raise InspectRecordError(f"{path}: field step is {record.step}, but the file name says step {step}")
    return record


def _field_name(loc: tuple[str | int, ...]) -> str:
    """``groups[0].rollouts[1].tokens[4].kind`` from pydantic's location tuple (token rows are arrays, so the
    position inside a row is translated to the :class:`TokenRow` field it holds)."""
    name = ""
    for i, part in enumerate(loc):
        inside_token_row = i >= 2 and loc[i - 2] == "tokens" and isinstance(part, int)
        if inside_token_row and part < len(TokenRow._fields):
            name += f".{TokenRow._fields[part]}"
        elif isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "<root>"


# ------------------------------------------------------------------------------------------------ token colours

_GREEN, _RED, _GREY = "22,163,74", "220,38,38", "113,113,122"
RATIO_CAP = 2.0  # A_hat / A at or above this gets the deepest colour (AMR-SD with beta = g_max = 1 reaches 2)


def advantage_ratio(a_hat: float | None, adv: float) -> float | None:
    """``A_hat / A_i``, the token's amplification (1 = plain GRPO); None when it is undefined."""
    if a_hat is None or adv == 0 or not math.isfinite(a_hat) or not math.isfinite(adv):
        return None
    return a_hat / adv


def _depth(ratio: float) -> float:
    """Background opacity for an amplification: 0.08 at x0, 0.30 at x1 (neutral), 0.70 at ``RATIO_CAP``."""
    r = min(max(ratio, 0.0), RATIO_CAP)
    if r <= 1:
        return 0.08 + 0.22 * r
    return 0.30 + 0.40 * (r - 1) / (RATIO_CAP - 1)


def token_background(a_hat: float | None, adv: float) -> str:
    """The CSS background of an assistant token: the hue says the sign of A_i, the depth ``A_hat / A_i``.

    Grey when A_i == 0 (the token gets no policy gradient); the neutral depth of x1 when A_hat is missing.
    """
    if adv == 0 or not math.isfinite(adv):
        return f"rgba({_GREY},0.18)"
    ratio = advantage_ratio(a_hat, adv)
    hue = _GREEN if adv > 0 else _RED
    return f"rgba({hue},{_depth(1.0 if ratio is None else ratio):.2f})"


# ------------------------------------------------------------------------------------------------ rendering

_e = html.escape


def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _visible_whitespace(text: str) -> str:
    """Escaped token text whose newlines show as a faint ↵ (a coloured newline-only token would be invisible)."""
    return _e(text).replace("\n", '<span class="nl">↵</span>\n')


def _token_tip(tok: TokenRow, adv: float) -> str:
    ratio = advantage_ratio(tok.a_hat, adv)
    amplification = "" if ratio is None else f"  (×{ratio:.2f})"
    return (
        f"A_hat {_num(tok.a_hat, signed=True)}   A_i {_num(adv, signed=True)}{amplification}\n"
        f"CIG {_num(tok.cig, signed=True)}   gate {_num(tok.gate)}   turn {tok.turn}"
    )


def _assistant_token(tok: TokenRow, adv: float) -> str:
    ratio = advantage_ratio(tok.a_hat, adv)
    flipped = " flip" if ratio is not None and ratio < 0 else ""
    return (
        f'<span class="t{flipped}" style="background:{token_background(tok.a_hat, adv)}" '
        f'data-tip="{_e(_token_tip(tok, adv))}">{_visible_whitespace(tok.text)}</span>'
    )


def _segment_key(tok: TokenRow) -> tuple[TokenKind, int]:
    # tool glue may carry the turn it follows or -1; only assistant turns split a run
    return tok.kind, tok.turn if tok.kind == "assistant" else -1


def _segments(tokens: list[TokenRow]) -> list[tuple[TokenKind, int, list[TokenRow]]]:
    """Runs of consecutive tokens of one kind (and, for assistant tokens, one turn)."""
    return [(kind, turn, list(run)) for (kind, turn), run in groupby(tokens, key=_segment_key)]


def _render_stream(rollout: InspectRollout) -> str:
    parts, last_turn = [], None
    for kind, turn, run in _segments(rollout.tokens):
        text = "".join(t.text for t in run)
        if kind == "prompt":
            parts.append(
                f'<details class="seg prompt"><summary>prompt · {len(run)} tokens</summary>'
                f'<div class="text">{_e(text)}</div></details>'
            )
        elif kind == "tool":
            parts.append(f'<div class="seg tool"><span class="seg-label">tool / template</span>{_e(text)}</div>')
        else:
            label = f'<span class="turn">turn {turn}</span>' if turn != last_turn else ""
            last_turn = turn
            spans = "".join(_assistant_token(t, rollout.adv) for t in run)
            parts.append(f'<div class="seg assistant">{label}{spans}</div>')
    return f'<div class="stream {_sign_class(rollout.adv)}">{"".join(parts)}</div>'


def _sign_class(adv: float) -> str:
    return "pos" if adv > 0 else "neg" if adv < 0 else "zero"


def _amplification_summary(rollout: InspectRollout) -> str:
    assistant = [t for t in rollout.tokens if t.kind == "assistant"]
    ratios = [r for t in assistant if (r := advantage_ratio(t.a_hat, rollout.adv)) is not None]
    turns = len({t.turn for t in assistant})
    spread = f" · A_hat/A ×{min(ratios):.2f}–×{max(ratios):.2f}" if ratios else ""
    return f"{len(assistant)} sampled tokens in {turns} turn{'s' if turns != 1 else ''}{spread}"


def _render_rollout(index: int, rollout: InspectRollout) -> str:
    ok, bad = '<span class="badge ok">✓ correct</span>', '<span class="badge bad">✗ wrong</span>'
    verdict = ok if rollout.correct else bad
    answer = "—" if rollout.extracted is None else _e(rollout.extracted)
    feedback = f'<span class="feedback">{_e(rollout.feedback)}</span>' if rollout.feedback else ""
    return (
        f'<section class="rollout">\n<div class="rollout-head"><span class="idx">rollout {index}</span>{verdict}'
        f'<span>reward <b>{rollout.reward:.2f}</b></span>'
        f'<span class="adv {_sign_class(rollout.adv)}">A<sub>i</sub> {_num(rollout.adv, signed=True)}</span>'
        f'<span>answer <code>{answer}</code></span>{feedback}</div>\n'
        f'<div class="rollout-stats">{_amplification_summary(rollout)}</div>\n'
        f"{_render_stream(rollout)}\n</section>"
    )


def _render_hints(group: InspectGroup) -> str:
    parts = []
    if group.hint is not None:
        parts.append(f'<div class="hint ok"><div class="label">accepted hint</div><pre>{_e(group.hint)}</pre></div>')
    rejected = [s for s in group.hint_samples if not s.ok]
    if group.hint is None and not group.hint_samples:
        parts.append('<div class="hint none">no hint for this group</div>')
    for sample in rejected:
        reason = _e(sample.reason or "no reason given")
        parts.append(
            f'<div class="hint rejected"><div class="label">rejected hint sample — {reason}</div>'
            f"<pre>{_e(sample.text)}</pre></div>"
        )
    return "\n".join(parts)


def _render_group(index: int, group: InspectGroup) -> str:
    diagnosis = (
        f'<details class="diagnosis"><summary>reflection prompt (what the policy saw when writing the hint)</summary>'
        f"<pre>{_e(group.diagnosis)}</pre></details>"
        if group.diagnosis is not None
        else ""
    )
    rollouts = "\n".join(_render_rollout(i, r) for i, r in enumerate(group.rollouts))
    return (
        f'<article class="card group" id="group-{index}">\n<h2><span class="gidx">group {index}</span> '
        f"{_e(group.task_id)}</h2>\n"
        f'<div class="label">task prompt</div><pre class="task">{_e(group.prompt)}</pre>\n'
        f"{diagnosis}\n{_render_hints(group)}\n{rollouts}\n</article>"
    )


def _hint_status(group: InspectGroup) -> str:
    rejected = sum(not s.ok for s in group.hint_samples)
    accepted = "accepted" if group.hint is not None else "none"
    return f"{accepted}, {rejected} rejected" if rejected else accepted


def _render_overview(record: InspectRecord) -> str:
    rows = []
    for i, g in enumerate(record.groups):
        n = len(g.rollouts)
        mean_reward = sum(r.reward for r in g.rollouts) / n if n else float("nan")
        correct = sum(r.correct for r in g.rollouts)
        rows.append(
            f'<tr><td><a href="#group-{i}">{i}</a></td><td><a href="#group-{i}">{_e(g.task_id)}</a></td>'
            f"<td>{mean_reward:.2f}</td><td>{correct}/{n}</td><td>{_hint_status(g)}</td></tr>"
        )
    return (
        '<table class="overview"><thead><tr><th>#</th><th>task</th><th>mean reward</th><th>correct</th>'
        f'<th>hint</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _swatch(a_hat: float, adv: float, label: str) -> str:
    return f'<span class="sw"><span class="t" style="background:{token_background(a_hat, adv)}">{label}</span></span>'


def _render_legend() -> str:
    depths = (0.0, 0.5, 1.0, 1.5, RATIO_CAP)
    reds = "".join(_swatch(-r, -1.0, f"×{r:g}") for r in reversed(depths))
    greens = "".join(_swatch(r, 1.0, f"×{r:g}") for r in depths)
    return (
        '<div class="card legend"><div class="scale">'
        f'<span class="end">A<sub>i</sub> &lt; 0</span>{reds}{_swatch(0.0, 0.0, "A<sub>i</sub> = 0")}{greens}'
        '<span class="end">A<sub>i</sub> &gt; 0</span></div>'
        "<p>Each sampled token is coloured by its rollout's advantage A<sub>i</sub> (green: reinforced, red: "
        "discouraged, grey: no gradient) at a depth set by A&#770;/A<sub>i</sub>, the token's amplification: "
        f"×1 is plain GRPO, deeper is amplified (×{RATIO_CAP:g} and above look alike), paler is damped; a dashed "
        "outline marks a token whose A&#770; has the opposite sign. Hover a token for A&#770;, CIG, gate and turn. "
        '<span class="nl">↵</span> is a newline inside a token.</p>'
        '<p><span class="seg tool inline">tool / template</span> tool results and chat-template glue (not trained); '
        "the prompt of each rollout is folded: click it to open.</p></div>"
    )


_CSS = """
:root{--ink:#18181b;--soft:#71717a;--line:#e4e4e7;--muted:#f4f4f5;--green:22,163,74;--red:220,38,38}
*{box-sizing:border-box}
body{margin:0;background:#f6f6f7;color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 24px 80px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 12px;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.gidx{font-family:system-ui,sans-serif;font-size:13px;font-weight:600;color:#fff;background:var(--ink);
  border-radius:4px;padding:2px 7px;margin-right:6px;vertical-align:2px}
.meta{color:var(--soft);margin:0 0 16px}
.meta b{color:var(--ink)}
.card{background:#fff;border:1px solid var(--line);border-radius:12px;padding:18px 22px;margin:18px 0;
  box-shadow:0 1px 2px rgba(0,0,0,.04)}
.label{font-size:11.5px;font-weight:600;text-transform:uppercase;letter-spacing:.05em;color:var(--soft);
  margin:10px 0 4px}
pre,code,.stream{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
pre.task{background:var(--muted);border-radius:8px;padding:10px 12px}
code{background:var(--muted);border-radius:4px;padding:1px 5px}
details>summary{cursor:pointer;color:var(--soft);font-size:13px;user-select:none}
details.diagnosis{margin:10px 0}
details.diagnosis pre{border-left:3px solid var(--line);padding:6px 12px;margin-top:6px;color:#3f3f46}
.hint{border-radius:8px;padding:4px 12px 10px;margin:10px 0}
.hint .label{margin-top:6px}
.hint.ok{background:rgba(var(--green),.06);border-left:4px solid rgb(var(--green))}
.hint.ok .label{color:rgb(var(--green))}
.hint.rejected{background:rgba(var(--red),.05);border-left:4px solid rgba(var(--red),.7)}
.hint.rejected .label{color:rgb(var(--red));text-transform:none;letter-spacing:0;font-size:12.5px}
.hint.none{color:var(--soft);font-size:13px;padding:0}
.rollout{border-top:1px solid var(--line);margin-top:16px;padding-top:14px}
.rollout-head{display:flex;flex-wrap:wrap;gap:6px 16px;align-items:baseline;font-size:14px}
.idx{font-weight:700}
.badge{font-size:12px;font-weight:600;border-radius:999px;padding:1px 9px}
.badge.ok{background:rgba(var(--green),.14);color:rgb(21,128,61)}
.badge.bad{background:rgba(var(--red),.12);color:rgb(185,28,28)}
.adv{font-weight:700;font-family:ui-monospace,Menlo,Consolas,monospace}
.adv.pos{color:rgb(21,128,61)}.adv.neg{color:rgb(185,28,28)}.adv.zero{color:var(--soft)}
.feedback{color:var(--soft);font-style:italic}
.rollout-stats{color:var(--soft);font-size:12.5px;margin:2px 0 8px}
.stream{line-height:1.75;border-left:3px solid #d4d4d8;padding-left:12px}
.stream.pos{border-color:rgba(var(--green),.55)}.stream.neg{border-color:rgba(var(--red),.55)}
.seg{white-space:pre-wrap;overflow-wrap:anywhere}
.seg.prompt{margin:4px 0}
.seg.prompt .text{color:var(--soft);background:var(--muted);border-radius:6px;padding:6px 10px;margin-top:4px}
.seg.tool{display:block;background:var(--muted);color:#52525b;border-left:3px solid #a1a1aa;border-radius:4px;
  padding:4px 10px;margin:6px 0;font-size:12px;line-height:1.5}
.seg.tool.inline{display:inline;padding:1px 6px;margin:0;font-family:ui-monospace,Menlo,Consolas,monospace}
.seg-label{display:inline-block;margin-right:8px;font:600 10.5px/1.6 system-ui,sans-serif;text-transform:uppercase;
  letter-spacing:.05em;color:#a1a1aa}
.seg.assistant{margin:2px 0}
.turn{display:block;font:600 11px/1.4 system-ui,sans-serif;color:var(--soft);text-transform:uppercase;
  letter-spacing:.06em;border-top:1px dashed #d4d4d8;padding-top:4px;margin-top:8px}
.t{position:relative;border-radius:3px;box-shadow:inset -1px 0 0 rgba(255,255,255,.85)}
.t.flip{outline:1px dashed var(--ink);outline-offset:-1px}
.t:hover{outline:1.5px solid var(--ink);outline-offset:0}
.t[data-tip]:hover::after{content:attr(data-tip);position:absolute;left:0;top:100%;margin-top:3px;z-index:20;
  white-space:pre;background:var(--ink);color:#fff;font-size:12px;line-height:1.45;padding:6px 9px;
  border-radius:6px;box-shadow:0 4px 12px rgba(0,0,0,.2);pointer-events:none}
.nl{color:#a1a1aa}
.legend .scale{display:flex;flex-wrap:wrap;align-items:center;gap:4px}
.legend .end{font-size:13px;font-weight:600;margin:0 6px}
.legend p{margin:10px 0 0;font-size:13.5px;color:#3f3f46}
.sw .t{display:inline-block;min-width:46px;text-align:center;font:12px/22px ui-monospace,Menlo,Consolas,monospace}
table.overview{border-collapse:collapse;width:100%;font-size:14px}
.overview th{text-align:left;font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;color:var(--soft);
  font-weight:600;border-bottom:1px solid var(--line);padding:4px 8px}
.overview td{border-bottom:1px solid var(--muted);padding:5px 8px}
.overview a{color:inherit}
"""


def render_html(record: InspectRecord) -> str:
    """The whole page for one record, self-contained (inline CSS, no script, no external URL)."""
    rollouts = sum(len(g.rollouts) for g in record.groups)
    beta = "—" if record.beta is None else f"{record.beta:g}"
    groups = "\n".join(_render_group(i, g) for i, g in enumerate(record.groups))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        f"<title>AMR-SD inspect · step {record.step}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>Credit assignment at step {record.step}</h1>\n"
        f'<p class="meta">algorithm <b>{_e(record.algorithm)}</b> · β <b>{beta}</b> · '
        f"{len(record.groups)} groups · {rollouts} rollouts</p>\n"
        f'{_render_legend()}\n<div class="card">{_render_overview(record)}</div>\n{groups}\n</main>\n</body>\n</html>\n'
    )


def write_inspect_page(run_dir: str | Path, step: int | None = None, out: str | Path | None = None) -> Path:
    """Render the record of ``step`` (default: the latest) to ``out`` (default ``RUN_DIR/inspect/step_NNNNNN.html``)
    and return the path written."""
    record = load_record(run_dir, step)
    path = Path(out) if out is not None else record_path(run_dir, record.step).with_suffix(".html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(record), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``amrsd-train inspect``; returns 2 (with the reason on stderr) when the record is missing or malformed."""
    parser = argparse.ArgumentParser(
        prog="amrsd-train inspect",
        description="Render one logged step of a run (tokens, A_hat, CIG, hints) as a self-contained HTML page.",
    )
    parser.add_argument("run_dir", type=Path, help="the run's output_dir (holds inspect/step_NNNNNN.json)")
    parser.add_argument("--step", type=int, default=None, help="the step to show (default: the latest)")
    parser.add_argument("--out", type=Path, default=None, help="HTML file (default: RUN_DIR/inspect/step_NNNNNN.html)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        path = write_inspect_page(args.run_dir, args.step, args.out)
    except InspectRecordError as exc:
        print(f"amrsd-train inspect: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
