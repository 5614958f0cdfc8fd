"""The one rule every network's size arguments share."""

from __future__ import annotations

__all__ = ["check_sizes"]


def check_sizes(**sizes) -> None:
    """Refuse a width, depth, channel or class count below 1 (a zero-width layer builds and
    trains at chance without a word; a negative one fails deep inside torch). A tuple argument
    (``channels=(32, 64)``) is checked element by element.

    Raises:
        ValueError: ``model.net.<name>: must be an integer >= 1, got <value>``.
    """
    for name, value in sizes.items():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"model.net.{name}: must be an integer >= 1, got {value!r}")
