import os

import lightning  # noqa: F401  (import before any capsys test: Lightning binds its log handler to stderr)
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")


@pytest.fixture
def run_cli(tmp_path, capsys):
    """Run ``flcore`` in-process; returns (exit_code, stdout, stderr)."""
    from flcore.cli import main

    def _run(*args):
        argv = list(args)
        if argv and argv[0] == "fit" and not any(a.startswith("--trainer.log_dir") for a in argv):
            argv += ["--trainer.log_dir", str(tmp_path / "runs")]
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


def assert_same_tree(a, b, path=""):
    """``a`` and ``b`` (nested dicts and lists of tensors and plain values) are equal: the same
    keys and lengths, the same dtypes and every tensor bit for bit."""
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        a, b = dict(enumerate(a)), dict(enumerate(b))
    assert a.keys() == b.keys(), path
    for k in a:
        if isinstance(a[k], (dict, list)):
            assert_same_tree(a[k], b[k], f"{path}/{k}")
        elif isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{path}/{k}"
        else:
            assert a[k] == b[k], f"{path}/{k}"
