"""The line length pyproject.toml sets for ruff ([tool.ruff] line-length), checked without ruff."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_no_line_is_longer_than_the_configured_length():
    limit = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["line-length"]
    long = [f"{path.relative_to(ROOT)}:{number}: {len(line)} characters"
            for folder in ("sslkit", "tests") for path in sorted((ROOT / folder).rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if len(line) > limit]
    assert not long, f"{len(long)} lines longer than {limit} characters:\n" + "\n".join(long)
