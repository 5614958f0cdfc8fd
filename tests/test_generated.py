"""The published result tables (README and docs/ pages) are generated from the committed records,
their result prose cites only numbers that those tables show, and the docs site builds strictly."""

import importlib.util
import os
import re
import sys

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _regenerate():
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "benchmarks" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tables_and_readme_blocks_match_a_fresh_generation():
    assert _regenerate().stale() == []


def test_sync_replaces_a_stale_block(tmp_path):
    regen = _regenerate()
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    text = "x\n<!-- generated: t.md -->\nold\n<!-- end generated -->\ny\n"
    fresh = regen.sync_readme(text, tmp_path)
    assert fresh == "x\n<!-- generated: t.md -->\n| a |\n|---|\n| 1 |\n<!-- end generated -->\ny\n"
    assert regen.readme_blocks(fresh) == [("t.md", "| a |\n|---|\n| 1 |\n")]


DOCS = ROOT / "docs"


@pytest.mark.parametrize("page, tables_from", [
    ("docs/reproduction.md", "docs/reproduction.md"),
    ("docs/heterogeneous.md", "docs/heterogeneous.md"),
    ("docs/strategies.md", "docs/strategies.md"),
    ("README.md", "docs/reproduction.md"),  # the README's headline cites the reproduction's tables
])
def test_result_prose_cites_only_numbers_of_the_generated_tables(page, tables_from):
    """Every decimal number in a ``<!-- prose: ... -->`` block of ``page`` appears in a generated
    table of ``tables_from``."""
    regen = _regenerate()
    body = (ROOT / page).read_text()
    tables = set(re.findall(r"\d+\.\d+", "\n".join(b for _, b in regen.readme_blocks((ROOT / tables_from).read_text()))))
    assert tables, f"{tables_from}: no generated table"
    checked = 0
    for prose in re.findall(r"<!-- prose: [^>]*-->\n(.*?)<!-- end prose -->", body, re.S):
        for number in re.findall(r"\d+\.\d+", prose):
            assert number in tables, f"{page}: {number} is in the prose but in no generated table of {tables_from}"
            checked += 1
    assert checked >= (2 if page == "README.md" else 10)


def test_every_page_is_built_by_mkdocs_strict(tmp_path):
    """The documentation site builds with ``mkdocs build --strict``: no broken link, no docstring
    the API reference cannot render, every page in the navigation."""
    pytest.importorskip("mkdocs")
    import subprocess

    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()
    nav = {line.split(":")[-1].strip() for line in (ROOT / "mkdocs.yml").read_text().splitlines()
           if line.strip().startswith("- ") and line.strip().endswith(".md")}
    assert nav == {path.name for path in DOCS.glob("*.md")}, "every docs/ page is in mkdocs.yml's nav"
