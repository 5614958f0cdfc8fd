"""The math is mirrored and runnable: every public function of ``flcore.functional`` carries an
example that ``--doctest-modules`` runs, and strategy files define classes only (their math is a
pure function in ``flcore/functional/``)."""

import ast
import doctest
import inspect
import pathlib

import flcore.functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_public_function_has_a_runnable_example():
    missing = []
    for name in F.__all__:
        obj = getattr(F, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            examples = doctest.DocTestParser().get_examples(obj.__doc__ or "")
            if not examples:
                missing.append(f"{obj.__module__}.{name}")
    assert not missing, f"public functions without a >>> example: {missing}"


def test_every_functional_module_is_exported_and_documented():
    modules = sorted(p.stem for p in (ROOT / "flcore" / "functional").glob("*.py") if p.stem != "__init__")
    exported = {getattr(F, n).__module__.rsplit(".", 1)[-1] for n in F.__all__ if hasattr(getattr(F, n), "__module__")}
    assert set(modules) <= exported, f"modules with nothing in flcore.functional.__all__: {set(modules) - exported}"
    table = F.__doc__
    assert all(f":mod:`.{m}`" in table for m in modules), "flcore.functional's docstring table lists every module"


def test_strategy_files_define_no_module_level_functions():
    found = []
    for path in sorted((ROOT / "flcore" / "strategies").glob("*.py")):
        tree = ast.parse(path.read_text())
        found += [f"{path.name}:{n.name}" for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    assert not found, f"math belongs in flcore/functional/: {found}"
