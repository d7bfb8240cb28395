"""Errors of the task-spec loader: every problem names its file, the field path and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SpecIssue:
    """One problem found in one task file.

    ``loc`` is a dotted field path inside the file (``generator.params.a.range``), or ``"<yaml>"`` for a
    syntax error (then ``msg`` carries the line and column).
    """

    file: str
    loc: str
    msg: str

    def __str__(self) -> str:
        return f"{self.file}: {self.loc}: {self.msg}"


class TaskSpecError(ValueError):
    """Raised when one or more task files are invalid. ``issues`` holds every problem of every file."""

    def __init__(self, issues: list[SpecIssue]):
        self.issues = list(issues)
        files = sorted({i.file for i in self.issues})
        head = f"{len(self.issues)} problem(s) in {len(files)} task file(s):"
        super().__init__("\n".join([head, *(f"  - {i}" for i in self.issues)]))

    @classmethod
    def single(cls, file: str | Path, loc: str, msg: str) -> "TaskSpecError":
        return cls([SpecIssue(str(file), loc, msg)])
