"""Instance builders: one per kind of task family, each turning (family spec, index) into a :class:`TaskInstance`.

``FixedBuilder``      the spec's ``instances`` list, item ``index``;
``GeneratedBuilder``  parameters drawn from ``random.Random(f"{seed}:{index}:{attempt}")`` until the constraints hold,
                      then derived values, prompt and gold (an answer ``function`` runs in a sandbox, never here);
``DatasetBuilder``    row ``index`` of a JSONL/Parquet file, read once on first use.

All three answer to :class:`InstanceBuilder`, and :data:`BUILDERS` picks one by the spec's kind. A builder knows
nothing of caching or of which instances a caller wants: :class:`~amrsd_envs.catalog.TaskFamily` keeps those.

The split of an instance is ``test`` when a hash of (split seed, family id, key) falls below ``test_fraction``
(:func:`split_of_key`); the key is the instance id for fixed/dataset items and the canonical parameter values for
generators, so identical draws at two indices never straddle the split.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

import sympy

from amrsd_envs import expressions
from amrsd_envs.errors import TaskSpecError
from amrsd_envs.expressions import Val
from amrsd_envs.spec import ChoiceParam, FloatParam, IntParam, TaskFamilySpec, WorldSpec

if TYPE_CHECKING:
    from amrsd_envs.sandbox import ExecResult, SharedSandbox

Split = Literal["train", "test"]

DEFAULT_SYSTEM = {
    "math": "You are a careful mathematician. Solve the problem step by step and give the final answer as "
    "\\boxed{...}.",
    "science": "You are a careful scientist. Solve the problem step by step, keep track of units, and give the "
    "final answer as \\boxed{...} with its unit.",
    # how to write a tool call is the chat template's job (it renders the tools and the call format)
    "tooluse": "Solve the task by calling the available tools. When you are done, give the final answer as "
    "\\boxed{...}.",
    # BFCL-style function calling: the task's functions are the tools; the calls themselves are the answer
    "function_calling": "You can call the functions listed as tools. Answer the user's request by calling the "
    "functions it needs, with every argument the request determines (several calls in one message when it needs "
    "several). If no function fits the request, call none and say so.",
}


@dataclass(frozen=True)
class TaskInstance:
    """One concrete task: everything an env needs to run an episode and a verifier needs to grade it."""

    id: str
    family_id: str
    domain: str
    index: int
    prompt: str
    answer: str
    system: str
    verifier: str
    verifier_options: dict[str, Any]
    tools: tuple[str, ...]
    max_turns: int
    split: Split
    reference: str | None = None
    options: tuple[str, ...] | None = None
    format_penalty: float = 0.0
    max_attempts: int = 1  # final answers allowed (feedback-retry after a wrong one)
    retry_discount: float = 0.5  # a correct answer on attempt k earns retry_discount ** k
    difficulty: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)  # derived values as text, for oracle/world templates
    world: WorldSpec | None = None  # the family's world with its templates rendered for this instance

    def template_values(self) -> dict[str, Any]:
        """Values oracle and world templates may use: parameters, derived values, and ``answer``."""
        return {**self.params, **self.derived, "answer": self.answer}

    def messages(self) -> list[dict[str, str]]:
        """The opening conversation: system + user."""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.prompt}]


class InstanceError(Exception):
    """One instance could not be built; ``loc`` is the spec field at fault (reported as a SpecIssue at load)."""

    def __init__(self, loc: str, msg: str):
        super().__init__(f"{loc}: {msg}")
        self.loc, self.msg = loc, msg


class AnswerSandbox(Protocol):
    """What an answer function runs in: any sandbox (``make_sandbox(...)``, ``SharedSandbox``)."""

    def run(self, code: str, *, timeout_s: float | None = ..., memory_mb: int | None = ...,
            stdin: str | None = ...) -> "ExecResult": ...


class InstanceBuilder(Protocol):
    """Builds the instances of one family; index ``i`` always gives the same instance."""

    def __len__(self) -> int: ...

    def build(self, index: int) -> TaskInstance:
        """Instance ``index`` (raises InstanceError naming the spec field when it cannot be built)."""
        ...

    def split_key(self, index: int) -> str | None:
        """The split key of ``index`` without building it, or None when only the built instance knows its split."""
        ...

    def index_of(self, task_id: str) -> int | None:
        """The index whose instance has id ``task_id``, or None when no instance can have it."""
        ...


def split_of_key(spec: TaskFamilySpec, key: str) -> Split:
    """``test`` when sha256(split seed, family id, key), read as a fraction of 2**64, is below ``test_fraction``."""
    h = hashlib.sha256(f"{spec.split.seed}:{spec.id}:{key}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "test" if u < spec.split.test_fraction else "train"


def common_fields(spec: TaskFamilySpec, difficulty: int) -> dict[str, Any]:
    """The TaskInstance fields every instance of a family shares."""
    return dict(
        family_id=spec.id,
        domain=spec.domain,
        system=spec.system or DEFAULT_SYSTEM[spec.domain],
        verifier=spec.verifier.type,
        verifier_options=spec.verifier.options,
        tools=tuple(spec.tools),
        max_turns=spec.max_turns,
        format_penalty=spec.format_penalty,
        max_attempts=spec.retry.max_attempts,
        retry_discount=spec.retry.discount,
        difficulty=difficulty,
    )


# ----------------------------------------------------------------------------------------------------------------
# fixed instances


class FixedBuilder:
    """A ``instances:`` family: item ``index`` as written, with the family reference and world rendered over it."""

    def __init__(self, spec: TaskFamilySpec, source: Path, difficulty: int, sandbox: AnswerSandbox | None = None):
        assert spec.instances is not None  # BUILDERS dispatches on the kind
        self.spec, self.source, self.difficulty = spec, source, difficulty
        self.items = spec.instances

    def __len__(self) -> int:
        return len(self.items)

    def split_key(self, index: int) -> str:
        return f"{self.spec.id}/{self.items[index].id}"

    def index_of(self, task_id: str) -> int | None:
        for i, item in enumerate(self.items):
            if f"{self.spec.id}/{item.id}" == task_id:
                return i
        return None

    def build(self, index: int) -> TaskInstance:
        spec, item = self.spec, self.items[index]
        values = {**item.params, "answer": item.answer}
        reference = item.reference
        if reference is None and spec.reference is not None:
            reference = render(spec.reference, values, "reference")
        options = tuple(item.options) if item.options else None
        common = common_fields(spec, self.difficulty)
        verifier_options = dict(common.pop("verifier_options"))
        if spec.verifier.type == "choice" and options:
            verifier_options["options"] = list(options)
        return TaskInstance(
            **common,
            verifier_options=verifier_options,
            id=f"{spec.id}/{item.id}",
            index=index,
            prompt=item.prompt,
            answer=item.answer,
            reference=reference,
            options=options,
            split=split_of_key(spec, self.split_key(index)),
            params=dict(item.params),
            world=render_world(spec.world, values),
        )


# ----------------------------------------------------------------------------------------------------------------
# generator


class GeneratedBuilder:
    """A ``generator:`` family: instance ``index`` is a pure function of (spec, difficulty, index).

    ``sandbox`` runs an ``answer.function``; None uses :func:`shared_answer_sandbox`, one per process."""

    def __init__(self, spec: TaskFamilySpec, source: Path, difficulty: int, sandbox: AnswerSandbox | None = None):
        assert spec.generator is not None and spec.answer is not None  # the schema guarantees both together
        self.spec, self.source, self.difficulty = spec, source, difficulty
        self.gen, self.answer = spec.generator, spec.answer
        self.sandbox = sandbox
        self._schedule: dict[str | None, list[tuple[int, str]]] | None = None  # on first draw: parse checks first
        self._id_re = re.compile(re.escape(spec.id) + r"/(\d+)")

    def __len__(self) -> int:
        return self.gen.count

    def split_key(self, index: int) -> None:
        return None  # the key is the drawn parameters

    def index_of(self, task_id: str) -> int | None:
        m = self._id_re.fullmatch(task_id)
        return int(m.group(1)) if m else None

    def build(self, index: int) -> TaskInstance:
        spec = self.spec
        params, values = self.draw(index)
        tvals: dict[str, Any] = {k: Val(v) for k, v in values.items()}
        tvals.update({k: v for k, v in params.items()})  # params render as drawn (3.14, not 157/50)
        tvals["index"] = index
        prompt = render(spec.prompt or "", tvals, "prompt")
        answer = self.gold(params, values, tvals)
        tvals["answer"] = answer
        reference = render(spec.reference, tvals, "reference") if spec.reference else None
        options = tuple(render(o, tvals, "options") for o in spec.options) if spec.options else None
        verifier_options = dict(spec.verifier.options)
        if options is not None and spec.verifier.type == "choice":
            verifier_options["options"] = list(options)
        common = common_fields(spec, self.difficulty)
        del common["verifier_options"]
        return TaskInstance(
            **common,
            verifier_options=verifier_options,
            id=f"{spec.id}/{index:05d}",
            index=index,
            prompt=prompt,
            answer=answer,
            reference=reference,
            options=options,
            split=split_of_key(spec, _canonical(params)),
            params=params,
            derived={k: str(values[k]) for k in self.gen.derived},
            world=render_world(spec.world, tvals),
        )

    def draw(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Parameters and derived values of instance ``index`` (resampling until the constraints hold).

        Each constraint is checked as soon as every name it uses is defined, so a derived value that only exists
        for accepted draws (``mod_inverse(a, n)`` needs gcd(a, n) = 1) is never computed for rejected ones."""
        gen, level = self.gen, self.difficulty
        if self._schedule is None:
            self._schedule = constraint_schedule(list(gen.derived), gen.constraints)
        schedule = self._schedule
        for attempt in range(gen.max_attempts):
            rng = random.Random(f"{gen.seed}:{index}:{attempt}")
            params: dict[str, Any] = {}
            for name, p in gen.params.items():
                params[name] = _sample_param(p, rng, level, f"generator.params.{name}")
            values: dict[str, Any] = {k: expressions.to_sympy(v) for k, v in params.items()}
            values["difficulty"] = sympy.Integer(level)
            ok = _constraints_hold(schedule[None], values)
            for name, text in gen.derived.items():
                if not ok:
                    break
                try:
                    values[name] = expressions.evaluate(text, values)
                except ValueError as exc:
                    raise InstanceError(f"generator.derived.{name}", f"evaluation failed: {exc}") from None
                ok = _constraints_hold(schedule[name], values)
            if ok:
                return params, values
        raise InstanceError(
            "generator.constraints",
            f"no sample satisfied the constraints within max_attempts={gen.max_attempts} (instance {index}); "
            "widen the ranges or relax the constraints",
        )

    def gold(self, params: dict[str, Any], values: dict[str, Any], tvals: dict[str, Any]) -> str:
        """The gold answer as text: a template, an expression, or the answer function's result, formatted."""
        ans = self.answer
        if ans.template is not None:
            return render(ans.template, tvals, "answer.template")
        if ans.expr is not None:
            try:
                value = expressions.evaluate(ans.expr, values)
            except ValueError as exc:
                raise InstanceError("answer.expr", f"evaluation failed: {exc}") from None
        else:
            value = run_answer_function(ans.function or "", params, self.sandbox or shared_answer_sandbox())
        try:
            if ans.format == "latex":
                text = sympy.latex(value) if isinstance(value, sympy.Basic) else str(value)
            elif ans.format == "str":
                text = str(value)
            else:
                text = expressions.format_number(value, ans.sig)
        except (TypeError, ValueError) as exc:
            raise InstanceError("answer", f"cannot format answer value {value!r} as {ans.format}: {exc}") from None
        if ans.units:
            text = f"{text} {ans.units}"
        return text


def constraint_schedule(derived: list[str], constraints: list[str]) -> dict[str | None, list[tuple[int, str]]]:
    """Constraints keyed by the derived value after which they can run (None: right after the params)."""
    schedule: dict[str | None, list[tuple[int, str]]] = {None: [], **{n: [] for n in derived}}
    for k, text in enumerate(constraints):
        used = expressions.names_in(text) & set(derived)
        last = max(used, key=derived.index) if used else None
        schedule[last].append((k, text))
    return schedule


def _constraints_hold(constraints: list[tuple[int, str]], values: dict[str, Any]) -> bool:
    for k, text in constraints:
        try:
            result = expressions.evaluate(text, values)
        except ValueError as exc:
            raise InstanceError(f"generator.constraints.{k}", f"evaluation failed: {exc}") from None
        if result in (sympy.true, True):
            continue
        if result in (sympy.false, False):
            return False
        raise InstanceError(f"generator.constraints.{k}", f"constraint {text!r} is not a boolean (got {result})")
    return True


def _sample_param(p: Any, rng: random.Random, level: int, loc: str) -> Any:
    if isinstance(p, ChoiceParam):
        choices = _level_value(p.choices, level, loc)
        return rng.choice(choices)
    lo, hi = _level_value(p.range, level, loc)
    if isinstance(p, IntParam):
        for _ in range(1000):
            v = rng.randint(int(lo), int(hi))
            if v not in p.exclude:
                return v
        raise InstanceError(loc, f"every value in [{lo}, {hi}] is excluded")
    assert isinstance(p, FloatParam)
    if p.log:
        v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        v = rng.uniform(lo, hi)
    v = round(v, p.decimals)
    return int(v) if p.decimals == 0 else v


def _level_value(value: Any, level: int, loc: str) -> Any:
    if not isinstance(value, dict):
        return value
    if level in value:
        return value[level]
    # levels not listed use the nearest lower one
    lower = [k for k in value if k <= level]
    if not lower:
        raise InstanceError(loc, f"no range for difficulty level {level}; levels given: {sorted(value)}")
    return value[max(lower)]


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


# -- answer functions ------------------------------------------------------------------------------------------

_shared_sandbox: "SharedSandbox | None" = None
_shared_lock = threading.Lock()


def shared_answer_sandbox() -> "SharedSandbox":
    """The process's local sandbox for answer functions whose caller passed none: started on first use (one
    sandbox for every family and instance, not one per call), closed when the process exits."""
    global _shared_sandbox
    with _shared_lock:
        if _shared_sandbox is None:
            from amrsd_envs.sandbox import SharedSandbox

            _shared_sandbox = SharedSandbox("local")
            atexit.register(_shared_sandbox.close)
        return _shared_sandbox


def run_answer_function(source: str, params: dict[str, Any], sandbox: AnswerSandbox) -> Any:
    """Run a family's ``answer(**params)`` in ``sandbox`` (never in this process) and parse its result."""
    code = (
        "import json, sys\n"
        + source
        + "\nparams = json.loads(sys.stdin.read())\nprint(json.dumps(str(answer(**params))))\n"
    )
    res = sandbox.run(code, timeout_s=10, memory_mb=512, stdin=json.dumps(params))
    if res.timed_out or res.exit_code != 0:
        tail = (res.stderr or res.stdout)[-500:]
        raise InstanceError("answer.function", f"answer() failed (exit {res.exit_code}): {tail}")
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InstanceError("answer.function", f"answer() printed no result: {res.stdout[-200:]!r}") from None


# ----------------------------------------------------------------------------------------------------------------
# dataset


class DatasetBuilder:
    """A ``dataset:`` family: row ``index`` of the file, its columns mapped by ``dataset.fields``."""

    def __init__(self, spec: TaskFamilySpec, source: Path, difficulty: int, sandbox: AnswerSandbox | None = None):
        assert spec.dataset is not None  # BUILDERS dispatches on the kind
        self.spec, self.source, self.difficulty = spec, source, difficulty
        self.ds = spec.dataset
        self._rows: list[dict[str, Any]] | None = None

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = read_dataset(self.spec, self.source)
        return self._rows

    def __len__(self) -> int:
        return len(self.rows())

    def row_id(self, index: int) -> str:
        row = self.rows()[index]
        raw = row.get(self.ds.fields["id"]) if "id" in self.ds.fields else None
        return f"{self.spec.id}/{raw if raw is not None else index}"

    def split_key(self, index: int) -> str:
        return self.row_id(index)

    def index_of(self, task_id: str) -> int | None:
        for i in range(len(self)):
            if self.row_id(i) == task_id:
                return i
        return None

    def build(self, index: int) -> TaskInstance:
        spec, ds = self.spec, self.ds
        row = self.rows()[index]
        tvals: dict[str, Any] = {"index": index}
        for ours, col in ds.fields.items():
            if col not in row:
                raise InstanceError(
                    f"dataset.fields.{ours}", f"column {col!r} not in row {index}; columns: {sorted(row)}"
                )
            tvals[ours] = row[col]
        answer = str(tvals["answer"])
        if ds.answer_regex:
            m = re.search(ds.answer_regex, answer, flags=re.MULTILINE)
            if m is None:
                raise InstanceError("dataset.answer_regex", f"no match in the answer of row {index}")
            answer = m.group(1).strip()
        tvals["answer"] = answer
        reference = str(tvals["reference"]) if "reference" in tvals else None
        if spec.reference:
            reference = render(spec.reference, tvals, "reference")
        return TaskInstance(
            **common_fields(spec, self.difficulty),
            id=self.row_id(index),
            index=index,
            prompt=render(spec.prompt or "", tvals, "prompt"),
            answer=answer,
            reference=reference,
            split=split_of_key(spec, self.row_id(index)),
            params={k: v for k, v in tvals.items() if k not in ("answer", "reference")},
        )


def read_dataset(spec: TaskFamilySpec, source: Path) -> list[dict[str, Any]]:
    """The rows of a dataset family's file (``limit`` applied). Raises TaskSpecError naming the file and field."""
    ds = spec.dataset
    assert ds is not None
    if ds.reader is not None:
        return _reader_rows(source, ds.reader, ds.limit)
    assert ds.path is not None  # DatasetSpec: exactly one of path, reader
    path = Path(ds.path)
    if not path.is_absolute():
        path = source.parent / path
    fmt = ds.format or ("parquet" if path.suffix == ".parquet" else "jsonl")
    if not path.exists():
        raise TaskSpecError.single(source, "dataset.path", f"file not found: {path}")
    rows: list[dict[str, Any]] = []
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskSpecError.single(source, "dataset.path", f"{path}:{lineno}: invalid JSON: {exc.msg}")
                if ds.limit and len(rows) >= ds.limit:
                    break
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise TaskSpecError.single(
                source, "dataset.format", "reading Parquet needs pyarrow: pip install 'amrsd[parquet]'"
            ) from None
        rows = pq.read_table(path).to_pylist()
        if ds.limit:
            rows = rows[: ds.limit]
    if not rows:
        raise TaskSpecError.single(source, "dataset.path", f"{path} has no rows")
    return rows


def _reader_rows(source: Path, name: str, limit: int | None) -> list[dict[str, Any]]:
    """The rows of ``dataset.reader`` (``amrsd_envs.datasets``); its problems reported at that field."""
    from amrsd_envs.datasets import DatasetUnavailable, read

    try:
        rows = read(name)
    except KeyError as exc:
        raise TaskSpecError.single(source, "dataset.reader", str(exc.args[0])) from None
    except DatasetUnavailable as exc:
        raise TaskSpecError.single(source, "dataset.reader", str(exc)) from None
    if not rows:
        raise TaskSpecError.single(source, "dataset.reader", f"reader {name!r} returned no rows")
    return rows[:limit] if limit else rows


# ----------------------------------------------------------------------------------------------------------------
# shared helpers and the registry


def render(template: str, values: dict[str, Any], loc: str) -> str:
    """``template.format(**values)``; a failure is an InstanceError at ``loc``."""
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise InstanceError(loc, f"cannot render template: {type(exc).__name__}: {exc}") from None


def render_world(world: WorldSpec | None, values: dict[str, Any]) -> WorldSpec | None:
    """The family's world with its seed templates rendered for one instance."""
    if world is None:
        return None
    update: dict[str, Any] = {}
    if world.sqlite is not None:
        seed = render(world.sqlite.seed, values, "world.sqlite.seed")
        update["sqlite"] = world.sqlite.model_copy(update={"seed": seed})
    if world.http is not None:
        update["http"] = world.http.model_copy(update={"seed": render(world.http.seed, values, "world.http.seed")})
    return world.model_copy(update=update)


#: The builder of each kind of family (``TaskFamilySpec.kind``), all with one signature.
BUILDERS: dict[str, Callable[..., InstanceBuilder]] = {
    "instances": FixedBuilder,
    "generator": GeneratedBuilder,
    "dataset": DatasetBuilder,
}


def make_builder(
    spec: TaskFamilySpec, source: Path, difficulty: int, sandbox: AnswerSandbox | None = None
) -> InstanceBuilder:
    """The builder for ``spec``'s kind."""
    return BUILDERS[spec.kind](spec, source, difficulty, sandbox)
