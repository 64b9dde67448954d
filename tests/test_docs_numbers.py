"""The README and docs stay true: every number they state from a committed result is recomputed from its
table (docs/numbers.toml says which table, which rows, which column), and no page points outside the
repository."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ROOT / "docs" / "numbers.toml"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
AGGREGATES = {"mean": "mean", "min": "min", "max": "max", "sum": "sum", "count": "count"}


def entries() -> list[dict]:
    return tomllib.loads(NUMBERS.read_text())["number"]


def recompute(entry: dict) -> str:
    """The value the entry's table gives, written as the entry's format says."""
    frame = pd.read_csv(ROOT / entry["table"])
    if entry.get("query"):
        frame = frame.query(entry["query"])
    assert len(frame), f"{entry['table']}: no row matches {entry.get('query')!r}"
    values = pd.to_numeric(frame.eval(entry["value"]), errors="coerce").dropna()
    agg = entry.get("agg", "one")
    if agg == "one":
        assert values.nunique() == 1, f"{entry['table']}: {entry['value']} differs between rows: {sorted(set(values))}"
        return entry["format"].format(float(values.iloc[0]))
    if agg == "range":
        return entry["format"].format(float(values.min()), float(values.max()))
    return entry["format"].format(float(getattr(values, AGGREGATES[agg])()))


def _flat(text: str) -> str:
    # Line breaks in a page are spaces to a reader.
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("entry", entries(), ids=lambda e: f"{e['file']}:{e['value']}:{e['text'][:30]}")
def test_stated_number_is_the_committed_one(entry):
    page = _flat((ROOT / entry["file"]).read_text())
    quoted = _flat(entry["text"])
    assert quoted in page, f"{entry['file']} no longer says {quoted!r}: update docs/numbers.toml with the text"
    value = recompute(entry)
    assert value in quoted, f"{entry['file']} says {quoted!r}, but {entry['table']} gives {value}"


def test_numbers_file_names_committed_tables_only():
    for entry in entries():
        assert set(entry) <= {"file", "text", "table", "query", "value", "agg", "format"}, entry
        assert (ROOT / entry["table"]).is_file() and entry["table"].startswith("results/"), entry["table"]
        assert entry.get("agg", "one") in {"one", "range", *AGGREGATES}


def test_a_wrong_number_is_caught(tmp_path):
    """The check itself: a value that is not the table's fails it."""
    entry = dict(entries()[0])
    entry["format"] = "{:,.0f} extra"
    assert recompute(entry) not in _flat(entry["text"])
    assert not math.isnan(float(recompute({**entry, "format": "{}"})))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_point_nowhere_outside_the_repository(page):
    text = page.read_text()
    for outside in ("ALGORITHMS.md", "../shared", "shared/"):
        assert outside not in text, f"{page.name} points outside the repository ({outside})"
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith(("http://", "https://", "mailto:")):
            assert (page.parent / link).exists(), f"{page.name}: broken link {link}"
