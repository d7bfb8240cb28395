"""The task catalog: finds task files, validates them, and expands families into seeded instances.

Instances are computed lazily and cached: a generator family of 10,000 instances costs nothing until an index is
asked for. Instance ``i`` of a generator family is a pure function of (family spec, difficulty, i): its parameters
are drawn from ``random.Random(f"{seed}:{i}:{attempt}")``, so any instance is reproducible by index.

The split of an instance is ``test`` when a hash of (split seed, key) falls below ``test_fraction``; the key is the
instance id for fixed/dataset items and the canonical parameter values for generators, so identical draws at two
indices never straddle the split.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import sympy

from amrsd_envs import expressions
from amrsd_envs.errors import SpecIssue, TaskSpecError
from amrsd_envs.expressions import Val
from amrsd_envs.spec import (
    WorldSpec,
    ChoiceParam,
    FloatParam,
    IntParam,
    TaskFamilySpec,
    parse_task_file,
    template_fields,
)

Split = Literal["train", "test"]

DEFAULT_SYSTEM = {
    "math": "You are a careful mathematician. Solve the problem step by step and give the final answer as "
    "\\boxed{...}.",
    "science": "You are a careful scientist. Solve the problem step by step, keep track of units, and give the "
    "final answer as \\boxed{...} with its unit.",
    # how to write a tool call is the chat template's job (it renders the tools and the call format)
    "tooluse": "Solve the task by calling the available tools. When you are done, give the final answer as "
    "\\boxed{...}.",
}

VALIDATION_SAMPLES = 6


def builtin_tasks_dir() -> Path:
    """The suite shipped with the project (``tasks/`` next to the packages; ``$AMRSD_TASKS`` overrides)."""
    env = os.environ.get("AMRSD_TASKS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "tasks"


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


class TaskFamily:
    """A validated family plus the machinery to materialise its instances."""

    def __init__(self, spec: TaskFamilySpec, source: Path, *, difficulty: int | None = None, clamp: bool = False):
        self.spec = spec
        self.source = source
        self.difficulty = difficulty if difficulty is not None else spec.difficulty.default
        if clamp:  # one global knob scales a whole suite whose families have different level counts
            self.difficulty = max(1, min(self.difficulty, spec.difficulty.levels))
        if not 1 <= self.difficulty <= spec.difficulty.levels:
            raise ValueError(
                f"{source}: difficulty {self.difficulty} outside 1..{spec.difficulty.levels} for family {spec.id}"
            )
        self._cache: dict[int, TaskInstance] = {}
        self._rows: list[dict[str, Any]] | None = None
        self._check_static()

    # -- public ----------------------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.spec.id

    def __len__(self) -> int:
        if self.spec.instances is not None:
            return len(self.spec.instances)
        if self.spec.generator is not None:
            return self.spec.generator.count
        return len(self._dataset_rows())

    def instance(self, index: int) -> TaskInstance:
        if not 0 <= index < len(self):
            raise IndexError(f"family {self.id} has {len(self)} instances; index {index} is out of range")
        inst = self._cache.get(index)
        if inst is None:
            inst = self._build(index)
            self._cache[index] = inst
        return inst

    def indices(self, split: Split | None = None) -> Iterator[int]:
        """Indices in ascending order, optionally only those of one split."""
        for i in range(len(self)):
            if split is None or self.split_of(i) == split:
                yield i

    def split_of(self, index: int) -> Split:
        if self.spec.generator is not None:  # the key is the drawn parameters: build (and cache) the instance
            return self.instance(index).split
        return self._split_from_key(self._split_key(index))

    def instance_by_id(self, task_id: str) -> TaskInstance:
        if self.spec.instances is not None:
            for i, item in enumerate(self.spec.instances):
                if f"{self.id}/{item.id}" == task_id:
                    return self.instance(i)
        elif self.spec.dataset is not None:
            for i in range(len(self)):
                if self._row_id(i) == task_id:
                    return self.instance(i)
        else:
            m = re.fullmatch(re.escape(self.id) + r"/(\d+)", task_id)
            if m:
                return self.instance(int(m.group(1)))
        raise KeyError(f"no task {task_id!r} in family {self.id}")

    # -- validation --------------------------------------------------------------------------------------------

    def _check_static(self) -> None:
        """Name checks that need no sampling: template fields and expression names."""
        spec, issues = self.spec, []
        file = str(self.source)
        if spec.generator is not None:
            gen = spec.generator
            names = set(gen.params) | {"difficulty"}
            for name, text in gen.derived.items():
                try:
                    expressions.compile_expr(text, names)
                except ValueError as exc:
                    issues.append(SpecIssue(file, f"generator.derived.{name}", str(exc)))
                names.add(name)
            for k, text in enumerate(gen.constraints):
                try:
                    expressions.compile_expr(text, names)
                except ValueError as exc:
                    issues.append(SpecIssue(file, f"generator.constraints.{k}", str(exc)))
            ans = spec.answer
            if ans is not None and ans.expr is not None:
                try:
                    expressions.compile_expr(ans.expr, names)
                except ValueError as exc:
                    issues.append(SpecIssue(file, "answer.expr", str(exc)))
            base = names | {"difficulty", "index"}
            self._check_template(issues, "prompt", spec.prompt, base)
            if ans is not None and ans.template is not None:
                self._check_template(issues, "answer.template", ans.template, base)
            for k, opt in enumerate(spec.options or []):
                self._check_template(issues, f"options.{k}", opt, base)
            self._check_template(issues, "reference", spec.reference, base | {"answer"})
            self._check_world_templates(issues, base)
        elif spec.dataset is not None:
            cols = {k for k in spec.dataset.fields if k not in ("answer", "id", "reference")}
            self._check_template(issues, "prompt", spec.prompt, cols | {"index"})
            self._check_template(issues, "reference", spec.reference, cols | {"index", "answer"})
        else:
            for k, item in enumerate(spec.instances or []):
                names = set(item.params) | {"answer"}
                if spec.reference is not None:
                    self._check_template(issues, "reference", spec.reference, names)
            if spec.verifier.type == "choice":
                for k, item in enumerate(spec.instances or []):
                    if not item.options:
                        issues.append(SpecIssue(file, f"instances.{k}.options", "a choice task needs options"))
        if issues:
            raise TaskSpecError(issues)

    def _check_world_templates(self, issues: list[SpecIssue], names: set[str]) -> None:
        spec = self.spec
        if spec.world is not None and spec.world.sqlite is not None:
            self._check_template(issues, "world.sqlite.seed", spec.world.sqlite.seed, names)
        if spec.world is not None and spec.world.http is not None:
            self._check_template(issues, "world.http.seed", spec.world.http.seed, names)
        for k, step in enumerate(spec.oracle or []):
            self._check_template(issues, f"oracle.{k}.content", step.content, names | {"answer"})
            for c, call in enumerate(step.tool_calls):
                for path, text in _string_leaves(call.get("arguments", {}), f"oracle.{k}.tool_calls.{c}.arguments"):
                    self._check_template(issues, path, text, names | {"answer"})

    def _check_template(self, issues: list[SpecIssue], loc: str, template: str | None, names: set[str]) -> None:
        if template is None:
            return
        try:
            used = template_fields(template)
        except ValueError as exc:
            issues.append(SpecIssue(str(self.source), loc, f"malformed template: {exc}"))
            return
        unknown = used - names
        if unknown:
            issues.append(
                SpecIssue(
                    str(self.source),
                    loc,
                    f"template names undefined parameter(s) {sorted(unknown)}; defined: {sorted(names)}",
                )
            )

    def validate_samples(self, n: int = VALIDATION_SAMPLES) -> None:
        """Materialise the first ``n`` instances so runtime failures surface at load time."""
        issues: list[SpecIssue] = []
        for i in range(min(n, len(self))):
            try:
                self.instance(i)
            except _InstanceError as exc:
                issues.append(SpecIssue(str(self.source), exc.loc, exc.msg))
                break
        if issues:
            raise TaskSpecError(issues)

    # -- building ----------------------------------------------------------------------------------------------

    def _common(self) -> dict[str, Any]:
        spec = self.spec
        return dict(
            family_id=spec.id,
            domain=spec.domain,
            system=spec.system or DEFAULT_SYSTEM[spec.domain],
            verifier=spec.verifier.type,
            verifier_options=spec.verifier.options,
            tools=tuple(spec.tools),
            max_turns=spec.max_turns,
            format_penalty=spec.format_penalty,
            difficulty=self.difficulty,
        )

    def _build(self, index: int) -> TaskInstance:
        if self.spec.instances is not None:
            return self._build_fixed(index)
        if self.spec.generator is not None:
            return self._build_generated(index)
        return self._build_dataset(index)

    def _build_fixed(self, index: int) -> TaskInstance:
        item = self.spec.instances[index]  # type: ignore[index]
        reference = item.reference
        if reference is None and self.spec.reference is not None:
            reference = _render(self.spec.reference, {**item.params, "answer": item.answer}, "reference")
        options = tuple(item.options) if item.options else None
        verifier_options = dict(self._common()["verifier_options"])
        if self.spec.verifier.type == "choice" and options:
            verifier_options["options"] = list(options)
        return TaskInstance(
            **{**self._common(), "verifier_options": verifier_options},
            id=f"{self.id}/{item.id}",
            index=index,
            prompt=item.prompt,
            answer=item.answer,
            reference=reference,
            options=options,
            split=self.split_of(index),
            params=dict(item.params),
            world=self._render_world({**item.params, "answer": item.answer}),
        )

    # generator ----------------------------------------------------------------------------------------------

    def _draw(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Parameters and derived values of instance ``index`` (resampling until the constraints hold).

        Each constraint is checked as soon as every name it uses is defined, so a derived value that only exists
        for accepted draws (``mod_inverse(a, n)`` needs gcd(a, n) = 1) is never computed for rejected ones."""
        gen = self.spec.generator
        assert gen is not None  # guarded by the caller's kind dispatch
        level = self.difficulty
        schedule = self._constraint_schedule()
        for attempt in range(gen.max_attempts):
            rng = random.Random(f"{gen.seed}:{index}:{attempt}")
            params: dict[str, Any] = {}
            for name, p in gen.params.items():
                params[name] = _sample_param(p, rng, level, f"generator.params.{name}")
            values: dict[str, Any] = {k: expressions.to_sympy(v) for k, v in params.items()}
            values["difficulty"] = sympy.Integer(level)
            ok = self._constraints_hold(schedule[None], values)
            for name, text in gen.derived.items():
                if not ok:
                    break
                try:
                    values[name] = expressions.evaluate(text, values)
                except ValueError as exc:
                    raise _InstanceError(f"generator.derived.{name}", f"evaluation failed: {exc}") from None
                ok = self._constraints_hold(schedule[name], values)
            if ok:
                return params, values
        raise _InstanceError(
            "generator.constraints",
            f"no sample satisfied the constraints within max_attempts={gen.max_attempts} (instance {index}); "
            "widen the ranges or relax the constraints",
        )

    def _constraint_schedule(self) -> dict[str | None, list[tuple[int, str]]]:
        """Constraints keyed by the derived value after which they can run (None: right after the params)."""
        gen = self.spec.generator
        assert gen is not None
        order = list(gen.derived)
        schedule: dict[str | None, list[tuple[int, str]]] = {None: [], **{n: [] for n in order}}
        for k, text in enumerate(gen.constraints):
            used = expressions.names_in(text) & set(order)
            last = max(used, key=order.index) if used else None
            schedule[last].append((k, text))
        return schedule

    @staticmethod
    def _constraints_hold(constraints: list[tuple[int, str]], values: dict[str, Any]) -> bool:
        for k, text in constraints:
            try:
                result = expressions.evaluate(text, values)
            except ValueError as exc:
                raise _InstanceError(f"generator.constraints.{k}", f"evaluation failed: {exc}") from None
            if result in (sympy.true, True):
                continue
            if result in (sympy.false, False):
                return False
            raise _InstanceError(f"generator.constraints.{k}", f"constraint {text!r} is not a boolean (got {result})")
        return True

    def _gold(self, params: dict[str, Any], values: dict[str, Any], tvals: dict[str, Any]) -> str:
        ans = self.spec.answer
        assert ans is not None
        if ans.template is not None:
            return _render(ans.template, tvals, "answer.template")
        if ans.expr is not None:
            try:
                value = expressions.evaluate(ans.expr, values)
            except ValueError as exc:
                raise _InstanceError("answer.expr", f"evaluation failed: {exc}") from None
        else:
            value = _run_answer_function(ans.function or "", params)
        try:
            if ans.format == "latex":
                text = sympy.latex(value) if isinstance(value, sympy.Basic) else str(value)
            elif ans.format == "str":
                text = str(value)
            else:
                text = expressions.format_number(value, ans.sig)
        except (TypeError, ValueError) as exc:
            raise _InstanceError("answer", f"cannot format answer value {value!r} as {ans.format}: {exc}") from None
        if ans.units:
            text = f"{text} {ans.units}"
        return text

    def _build_generated(self, index: int) -> TaskInstance:
        params, values = self._draw(index)
        tvals: dict[str, Any] = {k: Val(v) for k, v in values.items()}
        tvals.update({k: v for k, v in params.items()})  # params render as drawn (3.14, not 157/50)
        tvals["index"] = index
        prompt = _render(self.spec.prompt or "", tvals, "prompt")
        answer = self._gold(params, values, tvals)
        tvals["answer"] = answer
        reference = _render(self.spec.reference, tvals, "reference") if self.spec.reference else None
        options = tuple(_render(o, tvals, "options") for o in self.spec.options) if self.spec.options else None
        verifier_options = dict(self.spec.verifier.options)
        if options is not None and self.spec.verifier.type == "choice":
            verifier_options["options"] = list(options)
        return TaskInstance(
            **{**self._common(), "verifier_options": verifier_options},
            id=f"{self.id}/{index:05d}",
            index=index,
            prompt=prompt,
            answer=answer,
            reference=reference,
            options=options,
            split=self._split_from_key(_canonical(params)),
            params=params,
            derived={k: str(values[k]) for k in self.spec.generator.derived},  # type: ignore[union-attr]
            world=self._render_world(tvals),
        )

    def _render_world(self, values: dict[str, Any]) -> WorldSpec | None:
        world = self.spec.world
        if world is None:
            return None
        update: dict[str, Any] = {}
        if world.sqlite is not None:
            update["sqlite"] = world.sqlite.model_copy(
                update={"seed": _render(world.sqlite.seed, values, "world.sqlite.seed")}
            )
        if world.http is not None:
            update["http"] = world.http.model_copy(update={"seed": _render(world.http.seed, values, "world.http.seed")})
        return world.model_copy(update=update)

    # dataset ------------------------------------------------------------------------------------------------

    def _dataset_rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = _read_dataset(self.spec, self.source)
        return self._rows

    def _row_id(self, index: int) -> str:
        fields = self.spec.dataset.fields  # type: ignore[union-attr]
        row = self._dataset_rows()[index]
        raw = row.get(fields["id"]) if "id" in fields else None
        return f"{self.id}/{raw if raw is not None else index}"

    def _build_dataset(self, index: int) -> TaskInstance:
        ds = self.spec.dataset
        assert ds is not None
        row = self._dataset_rows()[index]
        tvals: dict[str, Any] = {"index": index}
        for ours, col in ds.fields.items():
            if col not in row:
                raise _InstanceError(
                    f"dataset.fields.{ours}", f"column {col!r} not in row {index}; columns: {sorted(row)}"
                )
            tvals[ours] = row[col]
        answer = str(tvals["answer"])
        if ds.answer_regex:
            m = re.search(ds.answer_regex, answer, flags=re.MULTILINE)
            if m is None:
                raise _InstanceError("dataset.answer_regex", f"no match in the answer of row {index}")
            answer = m.group(1).strip()
        tvals["answer"] = answer
        reference = str(tvals["reference"]) if "reference" in tvals else None
        if self.spec.reference:
            reference = _render(self.spec.reference, tvals, "reference")
        return TaskInstance(
            **self._common(),
            id=self._row_id(index),
            index=index,
            prompt=_render(self.spec.prompt or "", tvals, "prompt"),
            answer=answer,
            reference=reference,
            split=self.split_of(index),
            params={k: v for k, v in tvals.items() if k not in ("answer", "reference")},
        )

    # split --------------------------------------------------------------------------------------------------

    def _split_key(self, index: int) -> str:
        if self.spec.instances is not None:
            return f"{self.id}/{self.spec.instances[index].id}"
        return self._row_id(index)

    def _split_from_key(self, key: str) -> Split:
        s = self.spec.split
        h = hashlib.sha256(f"{s.seed}:{self.id}:{key}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        return "test" if u < s.test_fraction else "train"


class _InstanceError(Exception):
    def __init__(self, loc: str, msg: str):
        super().__init__(f"{loc}: {msg}")
        self.loc, self.msg = loc, msg


def _sample_param(p: Any, rng: random.Random, level: int, loc: str) -> Any:
    if isinstance(p, ChoiceParam):
        choices = _level_value(p.choices, level, loc)
        return rng.choice(choices)
    rng_ = _level_value(p.range, level, loc)
    lo, hi = rng_
    if isinstance(p, IntParam):
        for _ in range(1000):
            v = rng.randint(int(lo), int(hi))
            if v not in p.exclude:
                return v
        raise _InstanceError(loc, f"every value in [{lo}, {hi}] is excluded")
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
        raise _InstanceError(loc, f"no range for difficulty level {level}; levels given: {sorted(value)}")
    return value[max(lower)]


def _string_leaves(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_leaves(v, f"{path}.{i}")


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _render(template: str, values: dict[str, Any], loc: str) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise _InstanceError(loc, f"cannot render template: {type(exc).__name__}: {exc}") from None


def _run_answer_function(source: str, params: dict[str, Any]) -> Any:
    """Run a family's ``answer(**params)`` in the local sandbox (never in this process) and parse its result."""
    from amrsd_envs.sandbox import make_sandbox

    code = (
        "import json, sys\n"
        + source
        + "\nparams = json.loads(sys.stdin.read())\nprint(json.dumps(str(answer(**params))))\n"
    )
    with make_sandbox("local") as sb:
        res = sb.run(code, timeout_s=10, memory_mb=512, stdin=json.dumps(params))
    if res.timed_out or res.exit_code != 0:
        tail = (res.stderr or res.stdout)[-500:]
        raise _InstanceError("answer.function", f"answer() failed (exit {res.exit_code}): {tail}")
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise _InstanceError("answer.function", f"answer() printed no result: {res.stdout[-200:]!r}") from None


def _read_dataset(spec: TaskFamilySpec, source: Path) -> list[dict[str, Any]]:
    ds = spec.dataset
    assert ds is not None
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


# ----------------------------------------------------------------------------------------------------------------
# catalog


class TaskCatalog:
    """All families found under one directory, by id."""

    def __init__(self, families: list[TaskFamily]):
        self.families: dict[str, TaskFamily] = {}
        for fam in families:
            if fam.id in self.families:
                raise TaskSpecError.single(
                    fam.source, "id", f"family id {fam.id!r} is already defined in {self.families[fam.id].source}"
                )
            self.families[fam.id] = fam

    def __len__(self) -> int:
        return len(self.families)

    def __iter__(self) -> Iterator[TaskFamily]:
        return iter(self.families.values())

    def __getitem__(self, family_id: str) -> TaskFamily:
        try:
            return self.families[family_id]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(family_id, list(self.families), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown task family {family_id!r}{hint}") from None

    def select(self, *, domain: str | None = None, families: list[str] | None = None) -> "TaskCatalog":
        """A sub-catalog: by domain and/or by family ids (glob patterns allowed, e.g. ``math.*``)."""
        import fnmatch

        chosen = []
        for fam in self:
            if domain is not None and fam.spec.domain != domain:
                continue
            if families is not None and not any(fnmatch.fnmatchcase(fam.id, pat) for pat in families):
                continue
            chosen.append(fam)
        if families is not None:
            for pat in families:
                if not any(fnmatch.fnmatchcase(f.id, pat) for f in chosen):
                    raise KeyError(f"no family matches {pat!r} (domain={domain}); known: {sorted(self.families)}")
        return TaskCatalog(chosen)

    def get(self, task_id: str) -> TaskInstance:
        family_id = task_id.split("/", 1)[0]
        return self[family_id].instance_by_id(task_id)


def load_task_file(
    path: str | Path, *, difficulty: int | None = None, validate: bool = True, clamp_difficulty: bool = False
) -> TaskFamily:
    """Load and validate one YAML file. Raises :class:`TaskSpecError` naming the file and field."""
    path = Path(path)
    spec = parse_task_file(path)
    try:
        fam = TaskFamily(spec, path, difficulty=difficulty, clamp=clamp_difficulty)
    except ValueError as exc:
        if isinstance(exc, TaskSpecError):
            raise
        raise TaskSpecError.single(path, "difficulty", str(exc)) from None
    if validate:
        fam.validate_samples()
    return fam


def load_tasks(
    path: str | Path | None = None,
    *,
    domain: str | None = None,
    families: list[str] | None = None,
    difficulty: int | None = None,
) -> TaskCatalog:
    """Load every ``*.yaml``/``*.yml`` under ``path`` (default: the built-in ``tasks/``), recursively.

    All files are checked; if any are invalid, one :class:`TaskSpecError` lists every problem of every file.
    """
    root = Path(path) if path is not None else builtin_tasks_dir()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    else:
        raise TaskSpecError.single(root, "<path>", "no such file or directory")
    loaded: list[TaskFamily] = []
    issues: list[SpecIssue] = []
    for f in files:
        try:
            loaded.append(load_task_file(f, difficulty=difficulty, clamp_difficulty=True))
        except TaskSpecError as exc:
            issues.extend(exc.issues)
    seen: dict[str, Path] = {}
    for fam in loaded:
        if fam.id in seen:
            issues.append(SpecIssue(str(fam.source), "id", f"family id {fam.id!r} is also defined in {seen[fam.id]}"))
        seen[fam.id] = fam.source
    if issues:
        raise TaskSpecError(issues)
    catalog = TaskCatalog(loaded)
    if domain is not None or families is not None:
        catalog = catalog.select(domain=domain, families=families)
    return catalog



def load_env_tasks(
    env_ids: list[str],
    *,
    families: list[str] | None = None,
    path: str | Path | None = None,
    difficulty: int | None = None,
) -> TaskCatalog:
    """The families the given env ids serve (``AMRSD-All-v0``: all), optionally narrowed to ``families`` globs."""
    from amrsd_envs import ENV_IDS

    unknown = [e for e in env_ids if e not in ENV_IDS]
    if unknown:
        raise ValueError(f"unknown env id(s) {unknown}; valid: {sorted(ENV_IDS)}")
    domains = {ENV_IDS[e] for e in env_ids}
    full = load_tasks(path, difficulty=difficulty)
    catalog = TaskCatalog([f for f in full if None in domains or f.spec.domain in domains])
    return catalog.select(families=families) if families else catalog
