"""Dataset readers: rows for a ``dataset: {reader: NAME}`` family from data shipped inside an installed package.

A reader is a function of no arguments returning a list of row dicts (column name -> value), read from the
package's own data files through :mod:`importlib.resources` (never the network). The family maps the row's columns
with ``dataset.fields`` exactly as it maps a JSONL file's. Readers register here by name; a reader whose package is
not installed raises :class:`DatasetUnavailable` with the ``pip install`` line that fixes it.

Built in: ``champ`` (:mod:`amrsd_envs.datasets.champ`, the CHAMP competition-math problems of ``champ-dataset``) and
``bfcl_<category>`` for the BFCL v4 single-turn categories of ``bfcl-eval`` (:mod:`amrsd_envs.datasets.bfcl`:
``bfcl_simple``, ``bfcl_multiple``, ``bfcl_parallel``, ``bfcl_parallel_multiple``, ``bfcl_live_simple``,
``bfcl_live_multiple``, ``bfcl_irrelevance``), and ``bfcl_multi_turn_base``
(:mod:`amrsd_envs.datasets.bfcl_multi_turn`).
"""

from __future__ import annotations

from typing import Any, Callable

Row = dict[str, Any]


class DatasetUnavailable(Exception):
    """A reader cannot produce its rows (package missing, data file unreadable); the message says how to fix it."""


def _champ() -> list[Row]:
    from amrsd_envs.datasets.champ import read_rows

    return read_rows()


def _bfcl(category: str) -> Callable[[], list[Row]]:
    def read_category() -> list[Row]:
        from amrsd_envs.datasets.bfcl import read_rows

        return read_rows(category)

    return read_category


def _bfcl_multi_turn() -> list[Row]:
    from amrsd_envs.datasets.bfcl_multi_turn import read_rows

    return read_rows()


_BFCL_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
                    "irrelevance")  # amrsd_envs.datasets.bfcl.CATEGORIES, named here so registering imports nothing

#: Reader name -> function returning the rows. Register more with :func:`register_reader`.
READERS: dict[str, Callable[[], list[Row]]] = {
    "champ": _champ,
    **{f"bfcl_{category}": _bfcl(category) for category in _BFCL_CATEGORIES},
    "bfcl_multi_turn_base": _bfcl_multi_turn,
}


def register_reader(name: str, reader: Callable[[], list[Row]]) -> None:
    """Make ``dataset: {reader: name}`` call ``reader()`` for its rows."""
    READERS[name] = reader


def read(name: str) -> list[Row]:
    """The rows of reader ``name``. Raises KeyError (unknown name, listing the known ones) or DatasetUnavailable."""
    if name not in READERS:
        raise KeyError(f"unknown dataset reader {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name]()
