"""Build LEAF's Shakespeare JSON from raw Project Gutenberg text (LEAF's ``preprocess_shakespeare``
and ``gen_all_data`` steps, reimplemented).

Steps, as in LEAF: split the text into plays; collect every character's lines per play (one
client per (play, character)); drop characters with 2 lines or fewer; hold out the last
``test_fraction`` of each character's lines (at least one) for test; join a character's lines
with spaces, collapse runs of spaces, and cut every ``seq_length``-character window followed by
its next character into one sample.

Two layouts of Gutenberg text are read:

* ``complete``: the Complete Works file LEAF uses (``100.txt``): plays start at a title a few
  lines above "by William Shakespeare"; a speech starts with two spaces, a name and a period
  (``  HAMLET. To be, ...``) and continues on lines indented by four spaces (The Comedy of
  Errors has no indentation). These are LEAF's regular expressions.
* ``speaker``: Gutenberg's single-play etexts (one play per file, title on the first line): a
  speech starts with the speaker's name alone on a line ending with a period (``Ham.``) and runs
  to the next blank line; bracketed stage directions are skipped.

Usage: ``python -m datamodules.shakespeare_preprocess --input FILE [FILE ...] --output DIR``
writes ``DIR/train/all_data.json`` and ``DIR/test/all_data.json``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

__all__ = ["split_complete_works", "split_speaker_play", "plays_to_leaf", "text_to_samples", "main"]

_CHARACTER = re.compile(r"^  ([a-zA-Z][a-zA-Z ]*)\. (.*)")
_CONTINUATION = re.compile(r"^    (.*)")
_COE_CHARACTER = re.compile(r"^([a-zA-Z][a-zA-Z ]*)\. (.*)")
_COE_CONTINUATION = re.compile(r"^(.*)")
_SPEAKER = re.compile(r"^([A-Z][A-Za-z' ]{0,40}?)\.$")
_STAGE_WORDS = {"Enter", "Exit", "Exeunt", "Scene", "Act", "Manet", "Flourish", "Alarum", "Finis", "Sennet"}

Play = tuple[str, dict[str, list[str]]]


def split_complete_works(text: str) -> list[Play]:
    """Plays and their characters' lines from the Complete Works layout (see module docstring)."""
    lines = text.splitlines()
    plays: list[Play] = []
    current = None
    comedy_of_errors = False
    characters: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        if "by William Shakespeare" in line:
            title = next((lines[j].strip() for j in range(i - 2, max(i - 8, -1), -1) if lines[j].strip()), f"PLAY {len(plays)}")
            characters = defaultdict(list)
            plays.append((title, characters))
            comedy_of_errors = title == "THE COMEDY OF ERRORS"
            current = None
            continue
        if not plays:
            continue
        match = (_COE_CHARACTER if comedy_of_errors else _CHARACTER).match(line)
        if match:
            name = match.group(1).upper()
            if comedy_of_errors and name.startswith("ACT "):
                current = None
                continue
            characters[name].append(match.group(2))
            current = name
            continue
        if current:
            match = (_COE_CONTINUATION if comedy_of_errors else _CONTINUATION).match(line)
            if match and match.group(1).strip():
                if comedy_of_errors and match.group(1).startswith("<"):
                    current = None
                    continue
                characters[current].append(match.group(1))
                continue
            if not line.strip() and not comedy_of_errors:
                current = None
    return [(t, dict(c)) for t, c in plays if len(c) > 1]


def split_speaker_play(text: str, title: str | None = None) -> Play:
    """One play in the single-play layout (see module docstring); returns ``(title, characters)``.

    A speech is a block of non-blank lines whose first line is a name ending with a period
    (``Ham.``, ``First Clown.``); stage-direction blocks (``Enter ...``, ``Exeunt.``, bracketed lines)
    are skipped, so a one-word speech like ``Peace.`` inside a block is never taken for a speaker.
    """
    title = title or next((ln.strip() for ln in text.splitlines() if ln.strip()), "PLAY")
    characters: dict[str, list[str]] = defaultdict(list)
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        match = _SPEAKER.match(lines[0]) if len(lines) >= 2 else None
        if not match or match.group(1).split()[0] in _STAGE_WORDS:
            continue
        name = match.group(1).upper()
        for line in lines[1:]:
            line = re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]", "", line)).strip()
            if line:
                characters[name].append(line)
    return title, dict(characters)


def text_to_samples(text: str, seq_length: int = 80) -> tuple[list[str], list[str]]:
    """Every ``seq_length``-character window and the character after it (LEAF ``txt_to_data``)."""
    text = re.sub(r"   *", " ", text.replace("\n", " "))
    xs = [text[i : i + seq_length] for i in range(len(text) - seq_length)]
    ys = [text[i + seq_length] for i in range(len(text) - seq_length)]
    return xs, ys


def plays_to_leaf(plays: list[Play], test_fraction: float = 0.2, seq_length: int = 80) -> tuple[dict, dict]:
    """LEAF train and test JSON objects from parsed plays (users ``PLAY_CHARACTER``).

    A user is kept when its training lines give at least one window; its test part may hold none
    (a short last line), as in LEAF. A user name met twice (the same play twice) is merged.
    """
    data: dict[str, dict[str, tuple[list[str], list[str]]]] = {}
    for title, characters in plays:
        play = re.sub(r"\W+", "_", title.strip()).strip("_").upper()
        for name, lines in characters.items():
            if len(lines) <= 2:
                continue
            num_test = max(int(len(lines) * test_fraction), 1) if test_fraction > 0 else 0
            parts = {"train": lines[: len(lines) - num_test], "test": lines[len(lines) - num_test:]}
            samples = {k: text_to_samples("\n".join(v) + "\n", seq_length) for k, v in parts.items()}
            if not samples["train"][0]:
                continue
            user = data.setdefault(play + "_" + re.sub(r"\W+", "_", name), {"train": ([], []), "test": ([], [])})
            for split, (xs, ys) in samples.items():
                user[split][0].extend(xs)
                user[split][1].extend(ys)
    out = []
    for split in ("train", "test"):
        out.append({"users": list(data), "num_samples": [len(d[split][1]) for d in data.values()],
                    "user_data": {u: {"x": d[split][0], "y": d[split][1]} for u, d in data.items()}})
    return out[0], out[1]


def main(argv: list[str] | None = None) -> None:
    """Command line: parse Gutenberg files and write LEAF JSON (see module docstring)."""
    p = argparse.ArgumentParser(description="Build LEAF Shakespeare JSON from Project Gutenberg text.")
    p.add_argument("--input", nargs="+", required=True, help="Gutenberg text file(s)")
    p.add_argument("--output", required=True, help="directory for train/ and test/")
    p.add_argument("--layout", choices=["auto", "complete", "speaker"], default="auto")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seq-length", type=int, default=80)
    args = p.parse_args(argv)
    plays: list[Play] = []
    for path in args.input:
        text = Path(path).read_text(encoding="utf8", errors="replace")
        layout = args.layout
        if layout == "auto":
            layout = "complete" if text.count("by William Shakespeare") > 1 else "speaker"
        plays += split_complete_works(text) if layout == "complete" else [split_speaker_play(text)]
    train, test = plays_to_leaf(plays, args.test_fraction, args.seq_length)
    for split, blob in (("train", train), ("test", test)):
        out = Path(args.output) / split
        out.mkdir(parents=True, exist_ok=True)
        (out / "all_data.json").write_text(json.dumps(blob))
    print(f"{len(train['users'])} users, {sum(train['num_samples'])} train / {sum(test['num_samples'])} test samples "
          f"-> {args.output}")


if __name__ == "__main__":
    main()
