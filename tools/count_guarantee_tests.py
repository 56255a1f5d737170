"""Count the test cases behind docs/guarantees.md: how many fault, bad-input, security and determinism cases the
suite tries. One `pytest --collect-only` pass (nothing runs); a case is one collected item, so each
parametrization counts once.

    python tools/count_guarantee_tests.py            # the whole suite (tests/)
    python tools/count_guarantee_tests.py tests/test_security.py
    python tools/count_guarantee_tests.py --write    # put the whole suite's counts into docs/guarantees.md

The counts in docs/guarantees.md are this tool's output, never typed by hand: tests/test_repo_files.py fails when
they differ from the suite's, and `--write` brings them back.

The markers are registered in pyproject.toml ([tool.pytest.ini_options] markers); `pytest -m fault` runs one group.
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest

MARKERS = ("fault", "bad_input", "security", "determinism")
REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "guarantees.md"


class _Collector:
    """A pytest plugin that keeps each collected item's node id and marker names."""

    def __init__(self) -> None:
        self.items: list[tuple[str, set[str]]] = []

    def pytest_collection_finish(self, session) -> None:
        self.items = [(item.nodeid, {m.name for m in item.iter_markers()}) for item in session.items]


def collect(paths: list[str]) -> list[tuple[str, set[str]]]:
    """(node id, markers) of every test case under ``paths``; exits with pytest's output if collection fails."""
    collector = _Collector()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO), *paths],
                           plugins=[collector])
    if code != 0:
        sys.stdout.write(out.getvalue())
        raise SystemExit(f"test collection failed (pytest exit code {int(code)})")
    return collector.items


def counts(items: list[tuple[str, set[str]]]) -> dict[str, int]:
    table = {m: sum(m in marks for _, marks in items) for m in MARKERS}
    table["any of these"] = sum(bool(marks & set(MARKERS)) for _, marks in items)
    table["all test cases"] = len(items)
    return table


def with_counts(doc: str, table: dict[str, int]) -> str:
    """``doc`` (docs/guarantees.md) with its marker table's numbers replaced by ``table``'s; a missing row is an
    error naming it, so the page cannot silently stop being checked."""
    for marker in MARKERS:
        doc, n = re.subn(rf"^(\| `{marker}` \| )\d+( \|)", rf"\g<1>{table[marker]}\g<2>", doc, flags=re.M)
        if n != 1:
            raise ValueError(f"{DOC}: no table row for the marker `{marker}`")
    doc, n = re.subn(r"^(\| any of these \| )\d+( \| of )\d+( test cases)",
                     rf"\g<1>{table['any of these']}\g<2>{table['all test cases']}\g<3>", doc, flags=re.M)
    if n != 1:
        raise ValueError(f"{DOC}: no 'any of these' row")
    return doc


def main(argv: list[str]) -> int:
    write = "--write" in argv
    paths = [a for a in argv if a != "--write"] or [str(REPO / "tests")]
    table = counts(collect(paths))
    for name, n in table.items():
        print(f"{name:<16}{n:>6}")
    if write:
        DOC.write_text(with_counts(DOC.read_text(), table))
        print(f"wrote the counts into {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
