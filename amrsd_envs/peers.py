"""The peer-rollout buffer: recent finished episodes per task, for meta-reflection.

Reflection (docs/ALGORITHMS.md, amrsd (a)) shows the policy "a successful peer other than me" and "the most common wrong
answer" for the task it just attempted. Envs record every finished episode here when given a buffer
(``gym.make(..., peer_buffer=buf)``); the trainer reads it. The buffer is bounded per task (oldest first out),
thread-safe, and can persist to SQLite so a resumed run keeps its peers.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class PeerEpisode:
    """One finished episode, as reflection needs it."""

    task_id: str
    answer: str | None  # the extracted final answer (None when none was found)
    correct: bool
    transcript: str  # a short rendering of the assistant/tool turns
    step: int = 0  # the trainer step (or any monotone counter) when it finished
    episode_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class PeerBuffer:
    """Finished episodes per task id, at most ``per_task`` each (the oldest is dropped first).

    Args:
        per_task: bound per task id.
        path: optional SQLite file. When given, existing rows are loaded on construction and every ``add`` is
            written through, so a restarted process sees the same peers.
        transcript_chars: transcripts are cut to this many characters (head and tail kept).
    """

    def __init__(self, per_task: int = 16, path: str | Path | None = None, transcript_chars: int = 2000):
        if per_task < 1:
            raise ValueError(f"per_task must be >= 1, got {per_task}")
        self.per_task = per_task
        self.transcript_chars = transcript_chars
        self._episodes: dict[str, collections.deque[PeerEpisode]] = collections.defaultdict(
            lambda: collections.deque(maxlen=self.per_task)
        )
        self._lock = threading.RLock()
        self.path = Path(path) if path is not None else None
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self._open_db()

    # -- writing ----------------------------------------------------------------------------------------------

    def add(self, episode: PeerEpisode) -> None:
        ep = episode
        if len(ep.transcript) > self.transcript_chars:
            half = self.transcript_chars // 2
            ep = PeerEpisode(**{**asdict(ep), "transcript": ep.transcript[:half] + "\n...\n" + ep.transcript[-half:]})
        with self._lock:
            self._episodes[ep.task_id].append(ep)
            if self._db is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO peers VALUES (?, ?, ?, ?, ?, ?)",
                    (ep.episode_id, ep.task_id, ep.answer, int(ep.correct), ep.transcript, ep.step),
                )
                # keep the table bounded like the deque
                self._db.execute(
                    "DELETE FROM peers WHERE task_id = ? AND rowid NOT IN "
                    "(SELECT rowid FROM peers WHERE task_id = ? ORDER BY rowid DESC LIMIT ?)",
                    (ep.task_id, ep.task_id, self.per_task),
                )
                self._db.commit()

    def record(self, task_id: str, *, answer: str | None, correct: bool, transcript: str, step: int = 0) -> PeerEpisode:
        ep = PeerEpisode(task_id=task_id, answer=answer, correct=correct, transcript=transcript, step=step)
        self.add(ep)
        return ep

    # -- queries ----------------------------------------------------------------------------------------------

    def episodes(self, task_id: str) -> list[PeerEpisode]:
        with self._lock:
            return list(self._episodes.get(task_id, ()))

    def successful_peer(self, task_id: str, exclude: Iterable[str] = ()) -> PeerEpisode | None:
        """The most recent correct episode of ``task_id`` whose id is not in ``exclude``."""
        excluded = set(exclude)
        for ep in reversed(self.episodes(task_id)):
            if ep.correct and ep.episode_id not in excluded:
                return ep
        return None

    def most_common_wrong_answer(self, task_id: str) -> tuple[str, int] | None:
        """The most frequent extracted answer among wrong episodes (ties: the most recent wins), with its count."""
        counts: collections.Counter[str] = collections.Counter()
        last_seen: dict[str, int] = {}
        for k, ep in enumerate(self.episodes(task_id)):
            if not ep.correct and ep.answer:
                counts[ep.answer] += 1
                last_seen[ep.answer] = k
        if not counts:
            return None
        answer = max(counts, key=lambda a: (counts[a], last_seen[a]))
        return answer, counts[answer]

    def task_ids(self) -> list[str]:
        with self._lock:
            return list(self._episodes)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(d) for d in self._episodes.values())

    # -- persistence ------------------------------------------------------------------------------------------

    def _open_db(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS peers (episode_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, answer TEXT, "
            "correct INTEGER NOT NULL, transcript TEXT NOT NULL, step INTEGER NOT NULL)"
        )
        self._db.commit()
        for row in self._db.execute("SELECT * FROM peers ORDER BY rowid"):
            eid, tid, ans, ok, tr, step = row
            self._episodes[tid].append(PeerEpisode(tid, ans, bool(ok), tr, step, eid))

    def load(self, path: str | Path) -> None:
        """Add every episode of a snapshot written by :meth:`save` (a resumed run gets its peers back)."""
        snapshot = PeerBuffer(self.per_task, path, self.transcript_chars)
        try:
            with snapshot._lock:
                episodes = [ep for task in snapshot._episodes.values() for ep in task]
        finally:
            snapshot.close()
        for ep in episodes:
            self.add(ep)

    def save(self, path: str | Path) -> None:
        """Write a snapshot to a new SQLite file (used by trainer checkpoints)."""
        snapshot = PeerBuffer(self.per_task, path, self.transcript_chars)
        with self._lock:
            for task in self._episodes.values():
                for ep in task:
                    snapshot.add(ep)
        snapshot.close()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "PeerBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
