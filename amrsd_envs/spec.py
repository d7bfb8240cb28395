"""Pydantic models of a task YAML file (one task family per file) and its loader.

A family is exactly one of three kinds:

``instances``  a fixed list of items, each with its own prompt and answer;
``generator``  typed parameters sampled with a seeded RNG (``Random(seed, index)``), optional derived values and
               constraints, a prompt template and a gold answer computed by a sympy expression, a string template
               or a small Python function run in the sandbox;
``dataset``    a local JSONL or Parquet file plus a field mapping (bring your own GSM8K/MATH copy), or the rows of a
               registered reader of an installed package's data (``reader: champ``, ``amrsd_envs.datasets``).

A ``dataset`` family of domain ``function_calling`` (the BFCL categories) also has a ``function_calling:`` block: each
task's own function schemas come from one of its fields, and the calls of the agent's first message are the answer.

Templates use ``str.format`` syntax: ``{a}``, ``{x:.2f}``, ``{sub[name]}``, and ``{v:latex}`` for the LaTeX form of a
sympy value. Expressions are sympy expressions over the parameters and earlier derived values (see
``amrsd_envs.expressions`` for the functions available). See ``tasks/README.md`` for a worked example of each kind.

Loading validates everything it can without sampling (field types, template names, expression syntax and names,
verifier options, tool names), then samples a few instances so a failing answer expression or an unsatisfiable
constraint is reported at load time too. Every problem is reported with the file, the field path and what was
expected; problems of several files are collected into one :class:`~amrsd_envs.errors.TaskSpecError`.

Bulky data stays out of the YAML: a choice parameter may name a JSON file (``choices_from``, relative to the YAML
file, like ``dataset.path``); it is read at load and its problems are reported at that field. A file is parsed once
per process while its bytes and those of the data files it names are unchanged (:func:`parse_task_file`), with
libyaml's C loader where PyYAML has it; :func:`task_file_header` reads a file's ``id``/``domain`` without parsing,
so a loader can skip the families it was not asked for.
"""

from __future__ import annotations

import json
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from amrsd_envs.errors import SpecIssue, TaskSpecError

Domain = Literal["math", "science", "tooluse", "function_calling"]
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
    """One element of ``choices`` (scalars or small mappings, e.g. ``{name: water, formula: H2O}``).

    Bulky choices (the HTTP families' catalogue snapshots) live in a JSON file named by ``choices_from``; the loader
    reads it into ``choices``, so the rest of the code sees one field either way."""

    type: Literal["choice"]
    choices: list[Any] | dict[int, list[Any]] | None = Field(
        None, description="The values to pick from, or {difficulty_level: [values]}."
    )
    choices_from: str | None = Field(
        None,
        description="A JSON file holding `choices` (a list, or {difficulty_level: [values]}), relative to the YAML "
        "file or absolute, e.g. `../data/inventory_catalogs.json`; read at load instead of writing `choices` inline.",
    )

    @field_validator("choices")
    @classmethod
    def _nonempty(cls, v: Any) -> Any:
        lists = v.values() if isinstance(v, dict) else [v] if v is not None else []
        if any(len(c) == 0 for c in lists):
            raise ValueError("choices must not be empty")
        return v

    @model_validator(mode="after")
    def _given(self) -> "ChoiceParam":
        if self.choices is None:
            raise ValueError("a choice parameter needs `choices` (or `choices_from`, a JSON file holding them)")
        return self


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


class RetrySpec(_Strict):
    """Feedback-retry: after a wrong final answer the env replies with the verifier's sanitized feedback as a user
    message and the episode goes on, until ``max_attempts`` final answers were given (or ``max_turns`` ran out).
    A correct answer on attempt ``k`` (0-based) earns ``discount ** k`` times the verifier's score."""

    max_attempts: int = Field(1, ge=1, le=16, description="Final answers allowed (1: no retry).")
    discount: float = Field(0.5, ge=0.0, le=1.0, description="Reward factor per retry: attempt k earns discount**k.")


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


class FunctionCallingSpec(_Strict):
    """Single-turn function calling (BFCL): each task shows the agent its own function schemas, and the agent's first
    message is its answer. The calls in it are graded by the verifier (e.g. ``bfcl_ast``) and never executed; a
    message without calls is an answer too (the right one when no function fits)."""

    schemas: str = Field(
        description="The `dataset.fields` entry holding each task's function schemas (a list of OpenAI tool schemas, "
        "`{type: function, function: {name, description, parameters}}`), shown to the agent as `info['tools']`."
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
    path: str | None = Field(None, description="JSONL or Parquet file, relative to the YAML file or absolute.")
    reader: str | None = Field(
        None, description="Instead of `path`: a registered reader of an installed package's data "
        "(`amrsd_envs.datasets`, e.g. `champ`) whose rows the `fields` map like a file's."
    )
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

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        if (self.path is None) == (self.reader is None):
            raise ValueError("a dataset needs exactly one of `path` (a file) and `reader` (a registered reader)")
        if self.reader is not None and self.format is not None:
            raise ValueError("`format` applies to a `path`, not to a `reader`")
        return self

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
    retry: RetrySpec = Field(default_factory=RetrySpec, description="Feedback-retry after a wrong final answer.")
    difficulty: DifficultySpec = Field(default_factory=DifficultySpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    world: WorldSpec | None = None
    oracle: list[OracleStep] | None = Field(
        None, description="Scripted oracle trajectory; default is the reference followed by the boxed answer."
    )
    function_calling: FunctionCallingSpec | None = Field(
        None, description="Per-task function schemas, and the calls of the first message are the answer (BFCL)."
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
        if (self.domain == "function_calling") != (self.function_calling is not None):
            raise ValueError("a `function_calling` block and `domain: function_calling` go together")
        if self.function_calling is not None:
            if self.dataset is None or self.function_calling.schemas not in self.dataset.fields:
                raise ValueError(f"function_calling.schemas ({self.function_calling.schemas!r}) must name an entry "
                                 "of `dataset.fields`: the column holding each task's function schemas")
            if self.tools or self.oracle or self.world is not None:
                raise ValueError("a function_calling family takes no `tools`, `oracle` or `world`: its functions "
                                 "are per task, its calls are never run, and its oracle comes from the verifier")
        if self.retry.max_attempts > self.max_turns:
            raise ValueError(f"retry.max_attempts ({self.retry.max_attempts}) exceeds max_turns ({self.max_turns}): "
                             "every attempt takes a turn")
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


#: The PyYAML loader task files are read with: libyaml's C loader where PyYAML was built with it (about 10x faster
#: than the pure-Python one on the large files), else the pure-Python one. Both build the same safe types.
YAML_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A file whose mtime is this close to the moment we read it may be written again within the same timestamp tick
# (filesystems stamp with a coarse clock) and keep its (mtime, size): such a read is confirmed by re-reading the bytes.
_RACY_NS = 2_000_000_000


@dataclass
class _Read:
    sig: tuple[int, int, int]  # (mtime_ns, size, inode) at the read
    data: bytes
    read_at_ns: int


class _FileBytes:
    """The bytes of files read before, returned without a read while (mtime, size, inode) is unchanged.

    The same unchanged content comes back as the same ``bytes`` object, so results derived from it can be checked with
    an identity test. A file that was new at its read is re-read and compared ("racily clean", as git calls it)."""

    def __init__(self) -> None:
        self._seen: dict[str, _Read] = {}

    def read(self, path: Path) -> bytes:
        """The file's bytes (raises OSError like ``Path.read_bytes``)."""
        st = path.stat()
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        seen = self._seen.get(str(path))
        if seen is not None and seen.sig == sig and seen.read_at_ns - st.st_mtime_ns > _RACY_NS:
            return seen.data
        read_at = time.time_ns()
        data = path.read_bytes()
        if seen is not None and seen.data == data:
            data = seen.data
        self._seen[str(path)] = _Read(sig, data, read_at)
        return data

    def unchanged(self, path: Path, data: bytes) -> bool:
        try:
            now = self.read(path)
        except OSError:
            return False
        return now is data or now == data


@dataclass(frozen=True)
class _Parsed:
    files: tuple[tuple[Path, bytes], ...]  # the YAML file and every data file it names, with the bytes read
    result: TaskFamilySpec | TaskSpecError


_FILES = _FileBytes()
_PARSED: dict[str, _Parsed] = {}
_HEADERS: dict[str, tuple[bytes, "TaskFileHeader"]] = {}


def clear_parse_cache() -> None:
    """Forget every file read and parsed in this process: the next load reads, parses and validates from scratch."""
    _FILES._seen.clear()
    _PARSED.clear()
    _HEADERS.clear()


def parse_task_file(path: str | Path) -> TaskFamilySpec:
    """Read and validate one YAML file without sampling: the schema, the data files it names (``choices_from``),
    template fields and expression names. Raises TaskSpecError naming the file and field.

    Parsed once per process: while the file and its data files are unchanged, a later call returns the same
    (immutable) spec, or raises the same problems, without parsing again."""
    path = Path(path)
    file = str(path)
    try:
        data = _FILES.read(path)
    except OSError as exc:
        raise TaskSpecError.single(file, "<file>", f"cannot read: {exc.strerror or exc}") from None
    hit = _PARSED.get(file)
    if hit is None or hit.files[0][1] is not data or not all(_FILES.unchanged(p, b) for p, b in hit.files[1:]):
        files: list[tuple[Path, bytes]] = [(path, data)]
        try:
            result: TaskFamilySpec | TaskSpecError = _parse(path, data, files)
        except TaskSpecError as exc:
            result = exc
        hit = _PARSED[file] = _Parsed(tuple(files), result)
    if isinstance(hit.result, TaskSpecError):
        raise TaskSpecError(hit.result.issues)
    return hit.result


def _parse(path: Path, data: bytes, files: list[tuple[Path, bytes]]) -> TaskFamilySpec:
    """Parse and check one file's bytes; appends every data file read to ``files``."""
    file = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskSpecError.single(file, "<file>", f"not UTF-8 text: {exc}") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as Path.read_text reads
    try:
        raw = yaml.load(text, Loader=YAML_LOADER)  # noqa: S506 - a safe loader (C or Python)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TaskSpecError.single(file, "<yaml>", f"{where}YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise TaskSpecError.single(
            file, "<root>", f"expected a mapping of fields (id, domain, ...), got {type(raw).__name__}"
        )
    issues = _read_choice_files(raw, path, files)
    if issues:
        raise TaskSpecError(issues)
    try:
        spec = TaskFamilySpec.model_validate(raw)
    except ValidationError as exc:
        raise TaskSpecError(_pydantic_issues(file, exc)) from None
    issues = static_issues(spec, file)
    if issues:
        raise TaskSpecError(issues)
    return spec


def _read_choice_files(raw: dict[str, Any], path: Path, files: list[tuple[Path, bytes]]) -> list[SpecIssue]:
    """Fill each ``choices_from`` parameter's ``choices`` from its JSON file (in place); the problems found."""
    generator = raw.get("generator")
    params = generator.get("params") if isinstance(generator, dict) else None
    if not isinstance(params, dict):
        return []  # the schema check reports it
    issues: list[SpecIssue] = []
    for name, param in params.items():
        if not isinstance(param, dict) or param.get("choices_from") is None:
            continue
        loc = f"generator.params.{name}.choices_from"
        ref = param["choices_from"]
        if not isinstance(ref, str):
            issues.append(SpecIssue(str(path), loc, f"expected a file path, got {type(ref).__name__}"))
            continue
        if "choices" in param:
            issues.append(SpecIssue(str(path), loc, "give `choices` or `choices_from`, not both"))
            continue
        target = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        try:
            data = _FILES.read(target)
        except OSError as exc:
            issues.append(SpecIssue(str(path), loc, f"cannot read {target}: {exc.strerror or exc}"))
            continue
        files.append((target, data))
        try:
            choices = json.loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            issues.append(SpecIssue(str(path), loc, f"{target}: invalid JSON: {exc}"))
            continue
        if not isinstance(choices, (list, dict)):
            issues.append(
                SpecIssue(str(path), loc, f"{target} must hold a list of choices or {{level: list}}, "
                          f"got {type(choices).__name__}")
            )
            continue
        param["choices"] = choices
    return issues


# -- checks that need no sampling: template fields and expression names ------------------------------------------


def static_issues(spec: TaskFamilySpec, file: str) -> list[SpecIssue]:
    """Names every template and expression of ``spec`` uses that nothing defines (and malformed templates)."""
    from amrsd_envs import expressions  # imports sympy: only when a file is actually checked

    issues: list[SpecIssue] = []

    def template(loc: str, text: str | None, names: set[str]) -> None:
        issue = _template_issue(file, loc, text, names)
        if issue is not None:
            issues.append(issue)

    def expression(loc: str, text: str, names: set[str]) -> None:
        try:
            expressions.compile_expr(text, names)
        except ValueError as exc:
            issues.append(SpecIssue(file, loc, str(exc)))

    if spec.generator is not None:
        gen = spec.generator
        names = set(gen.params) | {"difficulty"}
        for name, text in gen.derived.items():
            expression(f"generator.derived.{name}", text, names)
            names.add(name)
        for k, text in enumerate(gen.constraints):
            expression(f"generator.constraints.{k}", text, names)
        ans = spec.answer
        if ans is not None and ans.expr is not None:
            expression("answer.expr", ans.expr, names)
        base = names | {"difficulty", "index"}
        template("prompt", spec.prompt, base)
        if ans is not None and ans.template is not None:
            template("answer.template", ans.template, base)
        for k, opt in enumerate(spec.options or []):
            template(f"options.{k}", opt, base)
        template("reference", spec.reference, base | {"answer"})
        if spec.world is not None and spec.world.sqlite is not None:
            template("world.sqlite.seed", spec.world.sqlite.seed, base)
        if spec.world is not None and spec.world.http is not None:
            template("world.http.seed", spec.world.http.seed, base)
        for k, step in enumerate(spec.oracle or []):
            template(f"oracle.{k}.content", step.content, base | {"answer"})
            for c, call in enumerate(step.tool_calls):
                for loc, text in _string_leaves(call.get("arguments", {}), f"oracle.{k}.tool_calls.{c}.arguments"):
                    template(loc, text, base | {"answer"})
    elif spec.dataset is not None:
        cols = {k for k in spec.dataset.fields if k not in ("answer", "id", "reference")}
        template("prompt", spec.prompt, cols | {"index"})
        template("reference", spec.reference, cols | {"index", "answer"})
    else:
        for item in spec.instances or []:
            template("reference", spec.reference, set(item.params) | {"answer"})
        if spec.verifier.type == "choice":
            for k, item in enumerate(spec.instances or []):
                if not item.options:
                    issues.append(SpecIssue(file, f"instances.{k}.options", "a choice task needs options"))
    return issues


def _template_issue(file: str, loc: str, template: str | None, names: set[str]) -> SpecIssue | None:
    if template is None:
        return None
    try:
        used = template_fields(template)
    except ValueError as exc:
        return SpecIssue(file, loc, f"malformed template: {exc}")
    unknown = used - names
    if unknown:
        return SpecIssue(
            file, loc, f"template names undefined parameter(s) {sorted(unknown)}; defined: {sorted(names)}"
        )
    return None


def _string_leaves(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_leaves(v, f"{path}.{i}")


# -- a cheap look at a file's id and domain, for loading only the families asked for -----------------------------


@dataclass(frozen=True)
class TaskFileHeader:
    """The family id and domain a task file declares, or None where its text does not say so plainly."""

    id: str | None
    domain: str | None


_TOP_LEVEL_KEY = re.compile(rb"^(id|domain):[ \t]*(.*?)[ \t]*(?:#.*)?$", re.MULTILINE)


def task_file_header(path: str | Path) -> TaskFileHeader:
    """``id`` and ``domain`` read from their own top-level lines (``id: math.gcd_lcm``) without parsing the YAML.

    A value that is quoted oddly, tagged, repeated or not a valid id/domain reads as None: the caller then parses the
    file to know. Raises OSError when the file cannot be read."""
    path = Path(path)
    data = _FILES.read(path)
    hit = _HEADERS.get(str(path))
    if hit is not None and hit[0] is data:
        return hit[1]
    found: dict[str, list[str]] = {"id": [], "domain": []}
    for m in _TOP_LEVEL_KEY.finditer(data):
        value = m.group(2).decode("utf-8", errors="replace")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[m.group(1).decode()].append(value)
    ids, domains = found["id"], found["domain"]
    header = TaskFileHeader(
        id=ids[0] if len(ids) == 1 and _ID_RE.match(ids[0]) else None,
        domain=domains[0] if len(domains) == 1 and domains[0] in get_args(Domain) else None,
    )
    _HEADERS[str(path)] = (data, header)
    return header


def task_spec_json_schema() -> dict[str, Any]:
    """JSON Schema of a task file (``amrsd-tasks schema``)."""
    schema = TaskFamilySpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "AMR-SD task family"
    return schema
