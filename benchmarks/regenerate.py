"""Regenerate every committed report, claims table and documentation table from the committed records.

    python benchmarks/regenerate.py              # rewrite the reports (tables and figures) and the pages' blocks
    python benchmarks/regenerate.py --no-figures # tables only
    python benchmarks/regenerate.py --check      # change nothing; exit 1 if a table or a page's block is stale

Each entry of :data:`REPORTS` is one ``flcore report`` (or ``per_arch.py``) invocation over a
folder of records (``records/<run>/{results.json,metrics.csv}``). The README and the pages under
``docs/`` (:data:`PAGES`) embed generated Markdown files between markers::

    <!-- generated: benchmarks/results/reproduction/claims.md -->
    ...the file's content, verbatim...
    <!-- end generated -->

and :func:`sync_readme` rewrites those blocks from the files. ``tests/test_generated.py`` runs
the check in the suite, so a published table cannot drift from its records.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown pages that may embed generated blocks: the README and ``docs/*.md``."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]
sys.path.insert(0, str(ROOT / "benchmarks" / "hetero"))

REPRO = "benchmarks/results/reproduction"
_REPRO_ARGS = ["--target", "0.6", "0.7", "0.8", "--last", "10", "--early", "100"]
_SUMMARY = ["--columns", "group", "runs", "final", "last_mean", "early", "best", "rounds_to", "overtakes", "std", "wall"]
_HETERO_ARGS = ["--baseline", "fedavg_layerwise", "--claims", "benchmarks/hetero/claims.yaml",
                "--columns", "group", "final", "last_mean", "early", "rounds_to", "speed", "overtakes", "std", "wall"]

#: Run-name parts of the FedCross K and N ablations (their own report; other settings than the partitions' tables).
_ABLATIONS = ["_k5__", "_k20__", "_n50__", "_n200__", "_r2000__"]

REPORTS: list[dict] = [
    {"out": REPRO, "roots": [f"{REPRO}/records"],
     "args": [*_REPRO_ARGS, "--claims", "benchmarks/reproduction/claims.yaml"]},
    {"out": f"{REPRO}/by_partition/dir01", "roots": [f"{REPRO}/records/*__beta=0.1"], "exclude": _ABLATIONS + ["_m09"],
     "args": [*_REPRO_ARGS, "--baseline", "fedavg__beta=0.1", *_SUMMARY]},
    {"out": f"{REPRO}/by_partition/dir05", "roots": [f"{REPRO}/records/*__beta=0.5"], "exclude": _ABLATIONS,
     "args": [*_REPRO_ARGS, "--baseline", "fedavg__beta=0.5", *_SUMMARY]},
    {"out": f"{REPRO}/by_partition/fedcross_k_n", "roots": [f"{REPRO}/records/*_{x}__*" for x in ("k5", "k20", "n50", "n200")],
     "args": [*_REPRO_ARGS, *_SUMMARY]},
    {"out": f"{REPRO}/by_partition/iid", "roots": [f"{REPRO}/records/*_iid__*"],
     "args": [*_REPRO_ARGS, "--baseline", "fedavg_iid", *_SUMMARY]},
    {"out": f"{REPRO}/by_partition/fedmr_setting", "roots": [f"{REPRO}/records/*_m09__*"],
     "args": [*_REPRO_ARGS, "--baseline", "fedavg_m09__beta=0.1", *_SUMMARY]},
    {"out": "benchmarks/results/server_opt", "roots": ["benchmarks/results/server_opt/records"],
     "args": ["--target", "0.6", "0.7", "0.8", "--last", "10", "--early", "50", "--baseline", "fedavg__beta=0.1",
              "--columns", "group", "final", "last_mean", "early", "rounds_to", "overtakes", "std"]},
    {"out": "benchmarks/results/server_opt_dp", "roots": ["benchmarks/results/server_opt_dp/records"],
     "args": ["--target", "0.6", "0.7", "0.8", "--last", "10", "--early", "50", "--baseline", "fedavg_k100__beta=0.3",
              "--columns", "group", "rounds", "final", "last_mean", "rounds_to", "epsilon", "std"]},
    {"out": "benchmarks/results/hetero", "roots": ["benchmarks/results/hetero/records"],
     "args": ["--target", "0.7", "0.75", "--last", "4", *_HETERO_ARGS], "per_arch": [1]},
    {"out": "benchmarks/results/hetero200", "roots": ["benchmarks/results/hetero200/records"],
     "args": ["--target", "0.75", "0.8", "--last", "10", "--early", "50", *_HETERO_ARGS], "per_arch": [1, 10]},
]
"""The reports: output folder, record folders (glob patterns, relative to the repository; an
``exclude`` list of substrings drops matching run folders), ``flcore report`` arguments, and the
``per_arch.py --last`` tables to write (``per_arch.md`` for 1, ``per_arch_last10.md`` for 10)."""

ANALYSES = ["benchmarks/results/reproduction/analysis"]
"""Folders of ``benchmarks/analyze.py`` reports whose ``analysis.md`` is generated from ``analysis.json``."""

_BLOCK = re.compile(r"(<!-- generated: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def _roots(entry: dict) -> list[str]:
    roots = []
    for pattern in entry["roots"]:
        for path in sorted(ROOT.glob(pattern)):
            if not any(part in path.name for part in entry.get("exclude", [])):
                roots.append(str(path))
    return roots


def generate(entry: dict, out: Path, figures: bool = True) -> list[Path]:
    """Write one report's tables (and figures) into ``out``; the Markdown files written (none
    while its record folders hold no run yet)."""
    from flcore.report import main as report_main
    from per_arch import main as per_arch_main

    roots = _roots(entry)
    if not roots:
        return []
    out.mkdir(parents=True, exist_ok=True)
    argv = [*roots, "--out", str(out), *entry["args"], *([] if figures else ["--no-figures"])]
    with contextlib.redirect_stdout(io.StringIO()), _cwd(ROOT):
        report_main(argv)
    written = [out / n for n in ("report.md", "summary.md", "claims.md") if (out / n).exists()]
    for last in entry.get("per_arch", []):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            per_arch_main([*roots, "--last", str(last)])
        path = out / ("per_arch.md" if last == 1 else f"per_arch_last{last}.md")
        path.write_text(buf.getvalue())
        written.append(path)
    return written


@contextlib.contextmanager
def _cwd(path: Path):
    import os

    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def generate_analysis(folder: Path, out: Path) -> Path:
    """Write ``analysis.md`` for the analysis report in ``folder`` into ``out``; its path."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from analyze import analysis_table

    out.mkdir(parents=True, exist_ok=True)
    path = out / "analysis.md"
    path.write_text(analysis_table(json.loads((folder / "analysis.json").read_text())))
    return path


def sync_readme(text: str, root: Path = ROOT) -> str:
    """``text`` with every generated block replaced by its file's current content.

    Raises:
        FileNotFoundError: a block names a file that does not exist.
    """
    def fill(m: re.Match) -> str:
        body = (root / m["path"]).read_text()
        return m.group(1) + body + m.group(4)

    return _BLOCK.sub(fill, text)


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """``(path, embedded text)`` of every generated block of ``text``."""
    return [(m["path"], m["body"]) for m in _BLOCK.finditer(text)]


def stale(entries: list[dict] = REPORTS) -> list[str]:
    """The committed tables that differ from a fresh generation, and README blocks that differ
    from their files: one line each (empty when everything is current)."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, entry in enumerate(entries):
            fresh_dir = Path(tmp) / str(i)
            for fresh in generate(entry, fresh_dir, figures=False):
                committed = ROOT / entry["out"] / fresh.name
                if not committed.exists() or committed.read_text() != fresh.read_text():
                    problems.append(f"{entry['out']}/{fresh.name} differs from its records: python benchmarks/regenerate.py")
        for i, folder in enumerate(ANALYSES):
            fresh = generate_analysis(ROOT / folder, Path(tmp) / f"analysis{i}")
            if (ROOT / folder / "analysis.md").read_text() != fresh.read_text():
                problems.append(f"{folder}/analysis.md differs from analysis.json: python benchmarks/regenerate.py")
    for page in pages():
        text = page.read_text()
        if sync_readme(text) != text:
            problems.append(f"{page.relative_to(ROOT)}: a generated block differs from its file: "
                            f"python benchmarks/regenerate.py")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="report stale tables and README blocks; change nothing")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    args = p.parse_args(argv)
    if args.check:
        problems = stale()
        print("\n".join(problems) or "regenerate: every table and README block is current")
        return 1 if problems else 0
    for entry in REPORTS:
        for path in generate(entry, ROOT / entry["out"], figures=not args.no_figures):
            print(f"wrote {path.relative_to(ROOT)}")
    for folder in ANALYSES:
        print(f"wrote {generate_analysis(ROOT / folder, ROOT / folder).relative_to(ROOT)}")
    for page in pages():
        page.write_text(sync_readme(page.read_text()))
        print(f"synced {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
