"""The Lightning and torch internals flcore reads (flcore.compat) are where it expects them."""

import subprocess
from pathlib import Path

import pytest
import torch

from flcore import compat

ROOT = Path(__file__).resolve().parent.parent


def test_internals_are_present():
    compat.check_internals()  # raises one line naming the moved internal


def test_a_moved_internal_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(compat, "precision_choices", lambda: [])
    with pytest.raises(RuntimeError, match=r"flcore.compat: a Lightning/torch internal moved .*supported: lightning >=2.5 <2.7"):
        compat.check_internals()


def test_plain_loading():
    assert compat.has_plain_loading(torch.nn.Linear(2, 2)) and compat.has_plain_loading(torch.nn.BatchNorm2d(2))
    hooked = torch.nn.Linear(2, 2)
    hooked.register_load_state_dict_post_hook(lambda module, keys: None)
    assert not compat.has_plain_loading(hooked)


def test_pyproject_pins_the_supported_versions():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"lightning>=2.5,<2.7"' in text and '"torch==2.14.1"' in text
    assert compat.SUPPORTED == {"lightning": (">=2.5", "<2.7"), "torch": ("==2.14.1",)}


def test_no_private_lightning_or_torch_attribute_outside_compat():
    """Private attributes of Lightning or torch objects are read in flcore/compat.py only."""
    out = subprocess.run(["grep", "-rnE", r"\.(fit_loop|epoch_loop|_load_state_dict_(pre|post)_hooks|_NormBase|"
                          r"_PRECISION_INPUT_STR|_load_from_state_dict)\b", "flcore", "lightning_modules", "--include=*.py"],
                         cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    assert [line for line in out if not line.startswith("flcore/compat.py")] == []
