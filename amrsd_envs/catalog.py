"""The task catalog: finds task files, loads the families asked for, and serves their instances by index and id.

A :class:`TaskFamily` is the index over one family: which instances exist, which split each belongs to, and a cache
of the ones built. Building an instance is its builder's job (:mod:`amrsd_envs.builders`: fixed items, a seeded
generator, or dataset rows); checking a file is the spec's (:mod:`amrsd_envs.spec`). Instances are computed lazily
and cached: a generator family of 10,000 instances costs nothing until an index is asked for. Instance ``i`` of a
generator family is a pure function of (family spec, difficulty, i).

Loading is cheap to repeat: each file is parsed once per process while it is unchanged (see
:func:`amrsd_envs.spec.parse_task_file`), a family is sample-validated once per difficulty level, and when only some
families or one domain are asked for, only the files that declare them (on their ``id:``/``domain:`` lines) are
parsed at all. ``amrsd-tasks validate`` and ``load_tasks()`` without a filter still check every file.

Random draws of task ids go through one :class:`TaskSampler` (the env's ``reset``, the trainer's steps, and the
fixed first-N lists evaluation uses), bounded and failing with the family and split when a split is empty.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Iterator

from amrsd_envs.builders import (
    DEFAULT_SYSTEM,
    AnswerSandbox,
    InstanceBuilder,
    InstanceError,
    Split,
    TaskInstance,
    make_builder,
    split_of_key,
)
from amrsd_envs.errors import SpecIssue, TaskSpecError
from amrsd_envs.plugins import load_plugins
from amrsd_envs.spec import TaskFamilySpec, parse_task_file, task_file_header

__all__ = [
    "DEFAULT_SYSTEM",
    "Split",
    "TaskCatalog",
    "TaskFamily",
    "TaskInstance",
    "TaskSampler",
    "builtin_tasks_dir",
    "load_env_tasks",
    "load_task_file",
    "load_tasks",
]

VALIDATION_SAMPLES = 6
MAX_DRAWS = 10_000  # random draws per sampled task before a split counts as empty


def builtin_tasks_dir() -> Path:
    """The suite shipped with the project: the package ``amrsd_tasks`` (``tasks/`` of the repository, installed as
    package data); ``$AMRSD_TASKS`` overrides. A checkout that is on ``sys.path`` but not installed falls back to its
    ``tasks/`` folder."""
    env = os.environ.get("AMRSD_TASKS")
    if env:
        return Path(env)
    from importlib.resources import files

    try:
        root = files("amrsd_tasks")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "tasks"
    if not isinstance(root, Path):
        raise RuntimeError(f"the built-in task suite must be installed as files on disk (not zipped), found {root!r}")
    return root


class TaskFamily:
    """One validated family: its instances by index and id, their splits, and a cache of the instances built."""

    def __init__(
        self,
        spec: TaskFamilySpec,
        source: Path,
        *,
        difficulty: int | None = None,
        clamp: bool = False,
        sandbox: AnswerSandbox | None = None,
    ):
        self.spec = spec
        self.source = source
        self.difficulty = difficulty if difficulty is not None else spec.difficulty.default
        if clamp:  # one global knob scales a whole suite whose families have different level counts
            self.difficulty = max(1, min(self.difficulty, spec.difficulty.levels))
        if not 1 <= self.difficulty <= spec.difficulty.levels:
            raise ValueError(
                f"{source}: difficulty {self.difficulty} outside 1..{spec.difficulty.levels} for family {spec.id}"
            )
        self.builder: InstanceBuilder = make_builder(spec, source, self.difficulty, sandbox)
        self._cache: dict[int, TaskInstance] = {}

    @property
    def id(self) -> str:
        return self.spec.id

    def __len__(self) -> int:
        return len(self.builder)

    def instance(self, index: int) -> TaskInstance:
        if not 0 <= index < len(self):
            raise IndexError(f"family {self.id} has {len(self)} instances; index {index} is out of range")
        inst = self._cache.get(index)
        if inst is None:
            inst = self._cache[index] = self.builder.build(index)
        return inst

    def indices(self, split: Split | None = None) -> Iterator[int]:
        """Indices in ascending order, optionally only those of one split."""
        for i in range(len(self)):
            if split is None or self.split_of(i) == split:
                yield i

    def split_of(self, index: int) -> Split:
        key = self.builder.split_key(index)
        if key is None:  # a generator's key is its drawn parameters: build (and cache) the instance
            return self.instance(index).split
        return split_of_key(self.spec, key)

    def split_is_empty(self, split: Split) -> bool:
        """True when ``test_fraction`` leaves no instance in ``split`` (0: no test; 1: no train), without sampling."""
        fraction = self.spec.split.test_fraction
        return fraction <= 0.0 if split == "test" else fraction >= 1.0

    def instance_by_id(self, task_id: str) -> TaskInstance:
        index = self.builder.index_of(task_id)
        if index is None:
            raise KeyError(f"no task {task_id!r} in family {self.id}")
        return self.instance(index)

    def validate_samples(self, n: int = VALIDATION_SAMPLES) -> None:
        """Materialise the first ``n`` instances so runtime failures surface at load time."""
        for i in range(min(n, len(self))):
            try:
                self.instance(i)
            except InstanceError as exc:
                raise TaskSpecError.single(self.source, exc.loc, exc.msg) from None


# ----------------------------------------------------------------------------------------------------------------
# catalog and sampler


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
        chosen = [
            fam for fam in self
            if (domain is None or fam.spec.domain == domain) and (families is None or _matches_any(fam.id, families))
        ]
        if families is not None:
            _check_patterns(families, [f.id for f in chosen], self.families, domain)
        return TaskCatalog(chosen)

    def get(self, task_id: str) -> TaskInstance:
        family_id = task_id.split("/", 1)[0]
        return self[family_id].instance_by_id(task_id)


class TaskSampler:
    """Task instances of one split, for every caller that picks tasks: the env's ``reset``, the trainer's steps and
    evaluation's fixed task lists.

    :meth:`sample` draws at random: a family uniformly, then an index uniformly within it, drawn again until the
    instance is in the split (a generator's split depends on its drawn parameters, so it cannot be listed up front).
    Each task gets at most ``max_draws`` draws; a split that is empty, or too nearly so, raises ValueError naming the
    families and the split instead of spinning. :meth:`first` lists the first instances of each family, round-robin.
    """

    def __init__(
        self, catalog: TaskCatalog, split: Split, families: list[str] | None = None, *, max_draws: int = MAX_DRAWS
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if max_draws < 1:
            raise ValueError(f"max_draws must be >= 1, got {max_draws}")
        self.family_ids = list(families) if families else sorted(f.id for f in catalog)
        self.families = [catalog[f] for f in self.family_ids]  # an unknown id raises KeyError with suggestions
        if not self.families:
            raise ValueError("no task families to sample from")
        self.split, self.max_draws = split, max_draws
        if all(fam.split_is_empty(split) for fam in self.families):
            raise ValueError(
                f"the {split!r} split is empty in {_describe_splits(self.families)}; "
                f"set split.test_fraction {'above 0' if split == 'test' else 'below 1'} in the task file, or ask for "
                f"the other split"
            )

    def draw(self, rng: Any) -> TaskInstance:
        """One random instance of the split; ``rng`` is a ``numpy.random.Generator`` (``env.np_random``)."""
        for _ in range(self.max_draws):
            fam = self.families[int(rng.integers(len(self.families)))]
            index = int(rng.integers(len(fam)))
            if fam.split_of(index) == self.split:
                return fam.instance(index)
        raise ValueError(
            f"no {self.split!r} instance in {self.max_draws} random draws from {_describe_splits(self.families)}; "
            f"the families' split settings leave the {self.split!r} split empty or nearly so"
        )

    def sample(self, rng: Any, n: int) -> list[TaskInstance]:
        """``n`` random instances of the split (with replacement), drawn in order from ``rng``."""
        return [self.draw(rng) for _ in range(n)]

    def first(self, n: int) -> list[TaskInstance]:
        """The first ``n`` instances of the split, one per family in turn (fewer when the families run out)."""
        iters = [(fam, fam.indices(self.split)) for fam in self.families if not fam.split_is_empty(self.split)]
        out: list[TaskInstance] = []
        while len(out) < n and iters:
            for fam, indices in list(iters):
                index = next(indices, None)
                if index is None:
                    iters.remove((fam, indices))
                    continue
                out.append(fam.instance(index))
                if len(out) == n:
                    break
        return out


def _describe_splits(families: list[TaskFamily]) -> str:
    """``family tooluse.x (split.test_fraction=1.0 in tasks/...yaml)``, for error messages."""
    parts = [f"{fam.id} (split.test_fraction={fam.spec.split.test_fraction} in {fam.source})" for fam in families]
    return ("family " if len(parts) == 1 else "families ") + ", ".join(parts)


def _matches_any(family_id: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(family_id, pat) for pat in patterns)


def _check_patterns(patterns: list[str], chosen: list[str], known: Any, domain: Any) -> None:
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(f, pat) for f in chosen):
            raise KeyError(f"no family matches {pat!r} (domain={domain}); known: {sorted(known)}")


# ----------------------------------------------------------------------------------------------------------------
# loading

_validated: dict[int, tuple[TaskFamilySpec, set[int]]] = {}  # id(spec) -> (spec, levels whose samples built)


def load_task_file(
    path: str | Path,
    *,
    difficulty: int | None = None,
    validate: bool = True,
    clamp_difficulty: bool = False,
    sandbox: AnswerSandbox | None = None,
) -> TaskFamily:
    """Load and validate one YAML file. Raises :class:`TaskSpecError` naming the file and field.

    Each call returns a new family (its own instance cache); the parse and the sample validation are done once per
    process for an unchanged file and level. ``sandbox`` runs ``answer.function`` generators (default: one local
    sandbox shared by the whole process)."""
    path = Path(path)
    spec = parse_task_file(path)
    try:
        fam = TaskFamily(spec, path, difficulty=difficulty, clamp=clamp_difficulty, sandbox=sandbox)
    except ValueError as exc:
        if isinstance(exc, TaskSpecError):
            raise
        raise TaskSpecError.single(path, "difficulty", str(exc)) from None
    if validate and not _was_validated(spec, fam.difficulty):
        fam.validate_samples()
        if spec.dataset is None:  # a dataset's rows live in another file, which may change under the same spec
            _validated.setdefault(id(spec), (spec, set()))[1].add(fam.difficulty)
    return fam


def _was_validated(spec: TaskFamilySpec, level: int) -> bool:
    entry = _validated.get(id(spec))
    return entry is not None and entry[0] is spec and level in entry[1]


def load_tasks(
    path: str | Path | None = None,
    *,
    domain: str | None = None,
    families: list[str] | None = None,
    difficulty: int | None = None,
    sandbox: AnswerSandbox | None = None,
) -> TaskCatalog:
    """Load the ``*.yaml``/``*.yml`` files under ``path`` (default: the built-in ``tasks/``), recursively.

    Without ``domain`` and ``families`` every file is checked; if any are invalid, one :class:`TaskSpecError` lists
    every problem of every file. With them, only the files whose ``id:``/``domain:`` lines match are parsed (a file
    whose lines do not say so plainly is parsed to find out), so a broken file of another family does not stop this
    load; ``amrsd-tasks validate`` checks them all. ``sandbox`` runs ``answer.function`` generators.
    """
    plugins = load_plugins()  # third-party tools, verifiers and suites (entry points), before any file is read
    root = Path(path) if path is not None else builtin_tasks_dir()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    else:
        raise TaskSpecError.single(root, "<path>", "no such file or directory")
    files += plugins.task_files() if path is None else []
    wanted, known = _files_declaring(files, domain, families)
    loaded: list[TaskFamily] = []
    issues: list[SpecIssue] = []
    for f in wanted:
        try:
            loaded.append(load_task_file(f, difficulty=difficulty, clamp_difficulty=True, sandbox=sandbox))
        except TaskSpecError as exc:
            issues.extend(exc.issues)
    seen: dict[str, Path] = {}
    for fam in loaded:
        if fam.id in seen:
            issues.append(SpecIssue(str(fam.source), "id", f"family id {fam.id!r} is also defined in {seen[fam.id]}"))
        seen[fam.id] = fam.source
    if issues:
        raise TaskSpecError(issues)
    # the lines were a guess: the parsed spec decides
    chosen = [
        fam for fam in loaded
        if (domain is None or fam.spec.domain == domain) and (families is None or _matches_any(fam.id, families))
    ]
    if families is not None:
        known |= {fam.id for fam in loaded if domain is None or fam.spec.domain == domain}
        _check_patterns(families, [f.id for f in chosen], known, domain)
    return TaskCatalog(chosen)


def _files_declaring(files: list[Path], domain: str | None, families: list[str] | None) -> tuple[list[Path], set[str]]:
    """The files that may hold a wanted family, and the family ids of the domain seen on the way (for errors)."""
    if domain is None and families is None:
        return files, set()
    wanted: list[Path] = []
    known: set[str] = set()
    for f in files:
        try:
            header = task_file_header(f)
        except OSError:
            wanted.append(f)  # load_task_file reports it
            continue
        if header.id is None or (domain is not None and header.domain is None):
            wanted.append(f)  # the text does not say plainly: parse it
        elif domain is None or header.domain == domain:
            known.add(header.id)
            if families is None or _matches_any(header.id, families):
                wanted.append(f)
    return wanted, known


def load_env_tasks(
    env_ids: list[str],
    *,
    families: list[str] | None = None,
    path: str | Path | None = None,
    difficulty: int | None = None,
    sandbox: AnswerSandbox | None = None,
) -> TaskCatalog:
    """The families the given env ids serve (``AMRSD-All-v0``: all), optionally narrowed to ``families`` globs."""
    from amrsd_envs import ENV_IDS

    unknown = [e for e in env_ids if e not in ENV_IDS]
    if unknown:
        raise ValueError(f"unknown env id(s) {unknown}; valid: {sorted(ENV_IDS)}")
    domains = {ENV_IDS[e] for e in env_ids}
    patterns = families or None
    if None in domains or len(domains) == 1:
        domain = None if None in domains else next(iter(domains))
        return load_tasks(path, domain=domain, families=patterns, difficulty=difficulty, sandbox=sandbox)
    full = load_tasks(path, families=patterns, difficulty=difficulty, sandbox=sandbox)
    catalog = TaskCatalog([f for f in full if f.spec.domain in domains])
    return catalog.select(families=patterns) if patterns else catalog
