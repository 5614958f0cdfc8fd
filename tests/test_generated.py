"""The README's result tables are generated from the committed records, and its result prose
cites only numbers that those tables show."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


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


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.splitlines()[0]: p for p in parts[1:]}


def test_result_prose_cites_only_numbers_of_the_generated_tables():
    """Every decimal number in a ``<!-- prose: ... -->`` block of the reproduction and
    heterogeneous sections appears in a generated table of the same section."""
    regen = _regenerate()
    sections = _sections(README.read_text())
    checked = 0
    for title in ("Reproduction (500-round runs on Fashion-MNIST)", "Heterogeneous models: FedIN and layer-wise aggregation"):
        body = sections[title]
        tables = set(re.findall(r"\d+\.\d+", "\n".join(b for _, b in regen.readme_blocks(body))))
        assert tables, f"{title}: no generated table"
        for prose in re.findall(r"<!-- prose: [^>]*-->\n(.*?)<!-- end prose -->", body, re.S):
            for number in re.findall(r"\d+\.\d+", prose):
                assert number in tables, f"README {title!r}: {number} is in the prose but in no generated table"
                checked += 1
    assert checked > 30
