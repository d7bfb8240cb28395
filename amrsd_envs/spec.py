"""Pydantic models of a task YAML file (one task family per file) and its loader.

A family is exactly one of three kinds:

``instances``  a fixed list of items, each with its own prompt and answer;
``generator``  typed parameters sampled with a seeded RNG (``Random(seed, index)``), optional derived values and
               constraints, a prompt template and a gold answer computed by a sympy expression, a string template
               or a small Python function run in the sandbox;
``dataset``    a local JSONL or Parquet file plus a field mapping (bring your own GSM8K/MATH copy).

Templates use ``str.format`` syntax: ``{a}``, ``{x:.2f}``, ``{sub[name]}``, and ``{v:latex}`` for the LaTeX form of a
sympy value. Expressions are sympy expressions over the parameters and earlier derived values (see
``amrsd_envs.expressions`` for the functions available). See ``tasks/README.md`` for a worked example of each kind.

Loading validates everything it can without sampling (field types, template names, expression syntax and names,
verifier options, tool names), then samples a few instances so a failing answer expression or an unsatisfiable
constraint is reported at load time too. Every problem is reported with the file, the field path and what was
expected; problems of several files are collected into one :class:`~amrsd_envs.errors.TaskSpecError`.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from amrsd_envs.errors import SpecIssue, TaskSpecError

Domain = Literal["math", "science", "tooluse"]
Number = Union[int, float]

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------------------------------------
# parameters


def _check_range(rng: Any, *, integer: bool) -> Any:
    """A range is ``[lo, hi]`` or a map ``{difficulty_level: [lo, hi]}``."""
    ranges = rng.values() if isinstance(rng, dict) else [rng]
    for r in ranges:
        lo, hi = r
        if integer and (int(lo) != lo or int(hi) != hi):
            raise ValueError(f"int parameter range bounds must be integers, got [{lo}, {hi}]")
        if lo > hi:
            raise ValueError(f"range lower bound {lo} is above the upper bound {hi}")
    if isinstance(rng, dict):
        for level in rng:
            if level < 1:
                raise ValueError(f"difficulty levels start at 1, got {level}")
    return rng


class IntParam(_Strict):
    """An integer drawn uniformly from ``range`` (inclusive), skipping values in ``exclude``."""

    type: Literal["int"]
    range: tuple[int, int] | dict[int, tuple[int, int]] = Field(
        description="[lo, hi] inclusive, or {difficulty_level: [lo, hi]} to scale with the difficulty knob."
    )
    exclude: list[int] = Field(default_factory=list, description="Values never drawn (e.g. 0 for a divisor).")

    @field_validator("range")
    @classmethod
    def _range(cls, v: Any) -> Any:
        return _check_range(v, integer=True)


class FloatParam(_Strict):
    """A real drawn uniformly from ``range`` and rounded to ``decimals`` places (the rounded value is what the
    prompt shows and what the answer is computed from, so prompt and gold agree exactly)."""

    type: Literal["float"]
    range: tuple[float, float] | dict[int, tuple[float, float]] = Field(
        description="[lo, hi], or {difficulty_level: [lo, hi]}."
    )
    decimals: int = Field(2, ge=0, le=8, description="Decimal places the value is rounded to.")
    log: bool = Field(False, description="Sample uniformly in log space (for quantities spanning decades).")

    @field_validator("range")
    @classmethod
    def _range(cls, v: Any) -> Any:
        rng = _check_range(v, integer=False)
        return rng

    @model_validator(mode="after")
    def _log_positive(self) -> "FloatParam":
        ranges = self.range.values() if isinstance(self.range, dict) else [self.range]
        if self.log and any(lo <= 0 for lo, _ in ranges):
            raise ValueError("log sampling needs a strictly positive range")
        return self


class ChoiceParam(_Strict):
    """One element of ``choices`` (scalars or small mappings, e.g. ``{name: water, formula: H2O}``)."""

    type: Literal["choice"]
    choices: list[Any] | dict[int, list[Any]] = Field(
        description="The values to pick from, or {difficulty_level: [values]}."
    )

    @field_validator("choices")
    @classmethod
    def _nonempty(cls, v: Any) -> Any:
        lists = v.values() if isinstance(v, dict) else [v]
        if any(len(c) == 0 for c in lists):
            raise ValueError("choices must not be empty")
        return v


ParamSpec = Annotated[Union[IntParam, FloatParam, ChoiceParam], Field(discriminator="type")]


# ----------------------------------------------------------------------------------------------------------------
# answers, verifier, split, world


class AnswerSpec(_Strict):
    """How a generator computes its gold answer: exactly one of ``expr``, ``template``, ``function``."""

    expr: str | None = Field(None, description="A sympy expression over parameters and derived values.")
    template: str | None = Field(None, description="A str.format template (for string answers).")
    function: str | None = Field(
        None,
        description="Python source defining `answer(**params)`; run in the local sandbox, never in-process.",
    )
    format: Literal["latex", "str", "number"] = Field(
        "latex",
        description="How the value is written as the gold string: sympy LaTeX, sympy str, or a decimal number.",
    )
    sig: int = Field(6, ge=1, le=15, description="Significant digits when format is `number`.")
    units: str | None = Field(None, description="Unit appended to a `number` answer (pint syntax), e.g. `m/s`.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "AnswerSpec":
        given = [k for k in ("expr", "template", "function") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of expr, template, function (got {', '.join(given) or 'none'})"
            )
        if self.function is not None and "def answer" not in self.function:
            raise ValueError("function must define `def answer(**params)`")
        return self


class VerifierSpec(BaseModel):
    """``{type: <kind>, **options}``; the options are validated by the verifier kind's own options model."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = Field(description="A verifier kind registered in amrsd_envs.verifiers (math, numeric, ...).")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_kind(self) -> "VerifierSpec":
        from amrsd_envs.verifiers import VERIFIERS

        if self.type not in VERIFIERS:
            raise ValueError(f"unknown verifier {self.type!r}; valid kinds: {', '.join(sorted(VERIFIERS))}")
        try:
            VERIFIERS[self.type].options_model(**self.options)
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"bad options for verifier {self.type!r}: {msgs}") from None
        return self


class SplitSpec(_Strict):
    """Train/test split: an instance is in `test` when hash(seed, key) falls below ``test_fraction``. The key is the
    instance id for fixed and dataset items and the sampled parameters for generators, so two indices that happen to
    draw the same parameters always land on the same side."""

    test_fraction: float = Field(0.2, ge=0.0, le=1.0, description="Fraction of instances held out for testing.")
    seed: int = Field(0, description="Seed of the split hash; change it to draw a different split.")


class DifficultySpec(_Strict):
    """The difficulty knob: parameters may declare per-level ranges; ``default`` is the level used unless the
    caller asks for another (``load_tasks(..., difficulty=...)``)."""

    default: int = Field(1, ge=1)
    levels: int = Field(1, ge=1, description="Number of levels (1..levels).")

    @model_validator(mode="after")
    def _in_range(self) -> "DifficultySpec":
        if self.default > self.levels:
            raise ValueError(f"default level {self.default} exceeds levels={self.levels}")
        return self


class SqliteWorld(_Strict):
    """A per-episode SQLite database created from ``schema`` then ``seed`` (SQL scripts, str.format templates over
    the instance parameters)."""

    schema_sql: str = Field(alias="schema", description="CREATE TABLE statements.")
    seed: str = Field("", description="INSERT statements (a template over the parameters).")


class HttpWorld(_Strict):
    """A local HTTP service the episode may call (``http_request`` only reaches the hosts listed here)."""

    service: Literal["inventory"] = Field(description="Which built-in loopback service to start.")
    seed: str = Field("0", description="Seed of the service's initial state (template over the parameters).")


class WorldSpec(_Strict):
    sqlite: SqliteWorld | None = None
    http: HttpWorld | None = None


class OracleStep(_Strict):
    """One assistant message of a scripted oracle trajectory (templates over parameters and derived values;
    ``{answer}`` is the gold)."""

    content: str = Field("", description="Assistant text (final answer or commentary).")
    tool_calls: list[dict[str, Any]] = Field(
        default_factory=list, description="Calls as {name: ..., arguments: {...}}; string values are templates."
    )


# ----------------------------------------------------------------------------------------------------------------
# the three kinds


class FixedInstance(_Strict):
    id: str = Field(description="Stable id, unique within the family.")
    prompt: str
    answer: str
    reference: str | None = None
    options: list[str] | None = Field(None, description="Option texts of a multiple-choice item (A, B, C, ...).")
    params: dict[str, Any] = Field(default_factory=dict, description="Values the oracle/world templates may use.")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(f"id {v!r} must match {_ID_RE.pattern}")
        return v


class GeneratorSpec(_Strict):
    seed: int = Field(0, description="Family seed; instance i draws from Random(f'{seed}:{i}').")
    count: int = Field(10_000, ge=1, description="Number of instances (indices 0..count-1).")
    params: dict[str, ParamSpec] = Field(description="Sampled parameters, by name.")
    derived: dict[str, str] = Field(
        default_factory=dict, description="Name -> sympy expression over params and earlier derived values."
    )
    constraints: list[str] = Field(
        default_factory=list, description="Sympy boolean expressions every instance must satisfy (resampled if not)."
    )
    max_attempts: int = Field(200, ge=1, description="Resampling attempts before the constraints count as unsatisfiable.")

    @model_validator(mode="after")
    def _names(self) -> "GeneratorSpec":
        clash = set(self.params) & set(self.derived)
        if clash:
            raise ValueError(f"names defined both as params and derived: {sorted(clash)}")
        for name in [*self.params, *self.derived]:
            if not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"name {name!r} must be a Python identifier not starting with '_'")
            if name in {"answer", "difficulty", "index"}:
                raise ValueError(f"name {name!r} is reserved")
        return self


class DatasetSpec(_Strict):
    path: str = Field(description="JSONL or Parquet file, relative to the YAML file or absolute.")
    format: Literal["jsonl", "parquet"] | None = Field(None, description="Inferred from the suffix when omitted.")
    fields: dict[str, str] = Field(
        description="Map of our names to the file's columns: `answer` (required), `id`, `reference`; any other "
        "entry (e.g. `question: problem`) becomes a template variable for `prompt`."
    )
    answer_regex: str | None = Field(
        None, description="Regex whose first group extracts the answer from the answer field (GSM8K: '#### (.+)$')."
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N rows.")

    @field_validator("fields")
    @classmethod
    def _answer_field(cls, v: dict[str, str]) -> dict[str, str]:
        if "answer" not in v:
            raise ValueError("fields must map `answer` to a column")
        return v

    @field_validator("answer_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                if re.compile(v).groups < 1:
                    raise ValueError("answer_regex needs one capturing group")
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return v


# ----------------------------------------------------------------------------------------------------------------
# the family


class TaskFamilySpec(_Strict):
    """One YAML file: a family of task instances sharing a prompt shape, a verifier and tools."""

    id: str = Field(description="Globally unique family id, e.g. `math.linear_system`.")
    domain: Domain
    description: str = ""
    system: str | None = Field(None, description="System prompt; the domain default when omitted.")
    prompt: str | None = Field(None, description="Prompt template (generator, dataset); fixed instances carry their own.")
    answer: AnswerSpec | None = Field(None, description="How a generator computes the gold answer.")
    reference: str | None = Field(
        None, description="Worked-solution template (privileged feedback only; may use {answer})."
    )
    options: list[str] | None = Field(None, description="Choice templates for generated multiple-choice tasks.")
    verifier: VerifierSpec
    tools: list[str] = Field(default_factory=list, description="Tool names the episode may call.")
    max_turns: int = Field(1, ge=1, le=64, description="Assistant turns before the episode is truncated.")
    format_penalty: float = Field(0.0, ge=0.0, le=1.0, description="Subtracted from the reward when no answer is found.")
    difficulty: DifficultySpec = Field(default_factory=DifficultySpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    world: WorldSpec | None = None
    oracle: list[OracleStep] | None = Field(
        None, description="Scripted oracle trajectory; default is the reference followed by the boxed answer."
    )
    tags: list[str] = Field(default_factory=list)

    instances: list[FixedInstance] | None = None
    generator: GeneratorSpec | None = None
    dataset: DatasetSpec | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(f"family id {v!r} must be lowercase letters, digits, '.', '_' or '-'")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[str]) -> list[str]:
        from amrsd_envs.tools import TOOLS

        unknown = [t for t in v if t not in TOOLS]
        if unknown:
            raise ValueError(f"unknown tool(s) {unknown}; valid tools: {', '.join(sorted(TOOLS))}")
        if len(set(v)) != len(v):
            raise ValueError("tools are listed twice")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> "TaskFamilySpec":
        kinds = [k for k in ("instances", "generator", "dataset") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"a family needs exactly one of `instances`, `generator`, `dataset` (got {', '.join(kinds) or 'none'})"
            )
        if self.generator is not None:
            if self.prompt is None:
                raise ValueError("a generator family needs a `prompt` template")
            if self.answer is None:
                raise ValueError("a generator family needs an `answer` (expr, template or function)")
        if self.dataset is not None and self.prompt is None:
            raise ValueError("a dataset family needs a `prompt` template over its fields")
        if self.instances is not None:
            ids = [i.id for i in self.instances]
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"duplicate instance ids: {dup}")
            if not ids:
                raise ValueError("`instances` is empty")
        return self

    @property
    def kind(self) -> Literal["instances", "generator", "dataset"]:
        if self.instances is not None:
            return "instances"
        return "generator" if self.generator is not None else "dataset"


# ----------------------------------------------------------------------------------------------------------------
# loading


def template_fields(template: str) -> set[str]:
    """Root names a str.format template refers to (``{a}``, ``{sub[name]}``, ``{x:.2f}`` -> a, sub, x).

    Raises ValueError for a malformed template (unbalanced braces, positional fields)."""
    names: set[str] = set()
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root == "" or root.isdigit():
            raise ValueError(f"positional field {{{field}}} is not allowed; name a parameter")
        names.add(root)
        if spec and "{" in spec:
            names |= template_fields(spec)
    return names


def _pydantic_issues(file: str, exc: ValidationError) -> list[SpecIssue]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "<root>"
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "field required"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see `amrsd-tasks schema`)"
        elif err["type"] == "union_tag_invalid":
            msg = f"{msg}"
        if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        out.append(SpecIssue(file, loc, msg))
    return out


def parse_task_file(path: str | Path) -> TaskFamilySpec:
    """Read and validate the schema of one YAML file (no sampling). Raises TaskSpecError."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TaskSpecError.single(file, "<file>", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TaskSpecError.single(file, "<yaml>", f"{where}YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise TaskSpecError.single(
            file, "<root>", f"expected a mapping of fields (id, domain, ...), got {type(data).__name__}"
        )
    try:
        return TaskFamilySpec.model_validate(data)
    except ValidationError as exc:
        raise TaskSpecError(_pydantic_issues(file, exc)) from None


def task_spec_json_schema() -> dict[str, Any]:
    """JSON Schema of a task file (``amrsd-tasks schema``)."""
    schema = TaskFamilySpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "AMR-SD task family"
    return schema
