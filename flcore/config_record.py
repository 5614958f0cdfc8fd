"""The config of a run started from Python, recorded as the CLI records its resolved config.

The CLI writes the config it parsed (class paths and init args). A run built from objects has no
such text, so :func:`describe` reads it back from the objects: each constructor parameter's value
is the object's attribute of that name (or ``<name>_factory``, or a LightningModule's saved
``hparams``). A parameter whose value the object does not keep is listed under ``unrecorded``
instead of being guessed.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from typing import Any

__all__ = ["describe", "dotted_name", "python_run_config", "flatten"]

_PLAIN = (bool, int, float, str, type(None))


def dotted_name(obj) -> str:
    """``module.Class`` of an object (or of a class), as a config's ``class_path`` names it; the
    public package path when the class is re-exported there (``flcore.strategies.Scaffold``)."""
    cls = obj if isinstance(obj, type) or inspect.isfunction(obj) else type(obj)
    module = cls.__module__
    package = module.rsplit(".", 1)[0] if "." in module else module
    try:
        if getattr(importlib.import_module(package), cls.__name__, None) is cls:
            return f"{package}.{cls.__name__}"
    except ImportError:  # pragma: no cover - the class's own package is importable
        pass
    return f"{module}.{cls.__name__}"


def describe(obj: Any, _depth: int = 0) -> Any:
    """``obj`` as config data: plain values as they are, lists / tuples / dicts element-wise, a
    ``functools.partial`` (an optimizer factory) as ``{"class_path": its function, "init_args":
    its keywords}``, a class or function as its dotted name, any other object as
    ``{"class_path", "init_args"[, "unrecorded"]}`` from its constructor's signature."""
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # a tensor or an array: its shape, not its values
        return f"{type(obj).__name__}{tuple(obj.shape)}"
    if _depth > 8:
        return repr(obj)[:200]
    if isinstance(obj, (list, tuple)):
        return [describe(v, _depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, functools.partial):
        return {"class_path": dotted_name(obj.func), "init_args": {k: describe(v, _depth + 1) for k, v in obj.keywords.items()}}
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return dotted_name(obj)
    args, missing = {}, []
    try:
        params = inspect.signature(type(obj).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    saved = getattr(obj, "hparams", None) if hasattr(type(obj), "hparams") else None
    for name, param in params.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        for source in (obj.__dict__, getattr(obj, "_modules", {}), saved or {}):
            for key in (name, f"{name}_factory"):
                if key in source:
                    args[name] = describe(source[key], _depth + 1)
                    break
            if name in args:
                break
        else:
            missing.append(name)
    out: dict[str, Any] = {"class_path": dotted_name(type(obj)), "init_args": args}
    if missing:
        out["unrecorded"] = missing
    return out


def python_run_config(trainer, model, datamodule, seed: int) -> dict[str, Any]:
    """The config of a run started from Python: ``seed_everything``, ``trainer``, ``model`` (a
    user's own LightningModule as itself, not flcore's wrapper) and ``data``, each as
    :func:`describe` gives it, with ``"source": "python"``."""
    from lightning_modules.plain import PlainClient

    user = model.net if isinstance(model, PlainClient) else model
    return {"source": "python", "seed_everything": int(seed), "trainer": describe(trainer)["init_args"],
            "model": describe(user), "data": describe(datamodule)}


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """``{"prefix.a.b": leaf}`` for the scalar leaves of :func:`describe`'s output (class paths
    by their last name), for TensorBoard's hyperparameters."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        if "class_path" in value:
            out[prefix] = str(value["class_path"]).rsplit(".", 1)[-1]
            value = value.get("init_args", {})
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}", v))
        return out
    if isinstance(value, (bool, int, float, str)):
        return {prefix: value}
    return {}
