"""The ``flcore`` command: ``flcore fit | validate | test --config X.yaml`` (LightningCLI), and
``flcore sweep GRID.yaml`` (:mod:`flcore.sweep`) and ``flcore report RUN_FOLDERS --out DIR``
(:mod:`flcore.report`) over many runs.

The config has three sections: ``trainer`` (:class:`flcore.trainer.FederatedTrainer`), ``model``
(a ``lightning_modules`` LightningModule with ``net`` and ``optimizer``, or any user's own
LightningModule: :class:`lightning_modules.plain.PlainClient`) and ``data`` (a
``datamodules.FederatedDataModule``), plus ``seed_everything``. Bad input ends with one line
``flcore: error: <field>: <what is allowed>`` and exit status 2, before any training.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI

from flcore.errors import ClientFailureError, ConfigError, RunInterrupted
from flcore.trainer import FederatedTrainer

__all__ = ["FlcoreCLI", "main"]


class FlcoreCLI(LightningCLI):
    """LightningCLI whose trainer is the :class:`FederatedTrainer`."""

    def __init__(self, args=None, **kwargs):
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,  # a plain one is refused by the trainer, in one line
            trainer_class=FederatedTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},
            args=args,
            **kwargs,
        )

    def add_core_arguments_to_parser(self, parser) -> None:
        # LightningCLI accepts only Lightning classes as the trainer; add ours as it adds Trainer
        # (arguments parsed, instantiated by the CLI itself).
        parser.add_class_arguments(self.trainer_class, "trainer", fail_untyped=False, instantiate=False, sub_configs=True)
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "datamodule"},
            "validate": {"model", "datamodule"},
            "test": {"model", "datamodule"},
        }

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is not None and not isinstance(seed, bool) and (not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1):
            raise ConfigError(f"seed_everything: must be an integer in [0, 4294967295] or true (a random seed), got {seed!r}")
        super()._set_seed()

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads hyper-parameters from a Lightning checkpoint here; flcore checkpoints
        # are loaded (safely, weights_only) by FederatedTrainer itself.
        return None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            raise ConfigError(_one_line(err)) from None

    def _resolved_config(self) -> dict[str, Any]:
        text = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
        cfg = yaml.safe_load(text)
        cfg.pop("config", None)
        cfg.pop("ckpt_path", None)
        return cfg

    def before_fit(self) -> None:
        self.trainer.run_config = self._resolved_config()

    before_validate = before_fit
    before_test = before_fit


_NOISE = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
          "Parser key", "Problem with given class_path")


def _subclass_names(qualname: str) -> list[str]:
    """Names of the loaded concrete subclasses of the class at ``qualname``."""
    import importlib

    module, _, name = qualname.rpartition(".")
    try:
        base = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    found, todo = [], list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_") and not getattr(cls, "__abstractmethods__", None):
            found.append(f"{cls.__module__}.{cls.__name__}")
    return sorted(set(found))


def _one_line(err: BaseException) -> str:
    """One line naming the field and the problem, from a nested multi-line jsonargparse error."""
    lines = [ln.strip().lstrip("-").strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    keys = [k for ln in lines for k in re.findall(r'Parser key "([^"]+)"', ln)]
    classes = [c for ln in lines for c in re.findall(r"Problem with given class_path '([^']+)'", ln)]
    bases = [b for ln in lines if ln.startswith("Subtypes:") for b in re.findall(r"<class '([^']+)'>", ln)
             if b != "NoneType"]
    reasons = [ln for ln in lines if not ln.startswith(_NOISE)]
    reason = reasons[-1] if reasons else lines[0]
    if classes and ("has no attribute" in reason or "No module named" in reason or "Import path" in reason):
        allowed = _subclass_names(bases[-1]) if bases else []
        reason = f"class_path {classes[-1]!r} cannot be imported ({reason})"
        if allowed:
            reason += f"; allowed: {', '.join(allowed)} or another subclass of {bases[-1].rsplit('.', 1)[-1]}"
    field = ".".join(keys)
    return f"{field}: {reason}" if field and not reason.startswith(field) else reason


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last
    one silently, so a typo'd override would be lost without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def check_config_files(argv: list[str]) -> None:
    """Read every ``--config FILE`` of ``argv`` strictly before the CLI parses it: a YAML error
    is reported with the file, line, column and reason, and a duplicate key is an error.

    Raises:
        ConfigError: ``--config FILE: line L, column C: reason``.
    """
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        if not Path(path).is_file():
            continue  # inline YAML or a missing file: jsonargparse reports it
        try:
            yaml.load(Path(path).read_text(), Loader=_StrictLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            context = f" ({err.context})" if err.context else ""
            raise ConfigError(f"--config {path}: {where}{err.problem}{context}") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"--config {path}: cannot be read as YAML ({str(err).splitlines()[0][:120]})") from None


USAGE = """usage: flcore [-h] [--version] {fit,validate,test,sweep,report} ...

Federated learning on PyTorch Lightning.

subcommands:
  fit        train: flcore fit --config X.yaml [--ckpt_path last]
  validate   evaluate a checkpoint's global model: flcore validate --config X.yaml [--ckpt_path PATH]
  test       test a checkpoint's global model: flcore test --config X.yaml [--ckpt_path PATH]
  sweep      run a grid of experiments, resumably: flcore sweep GRID.yaml [--workers N]
  report     tables and figures over run folders: flcore report RUNS... --out DIR

flcore SUBCOMMAND --help shows a subcommand's options (fit --print_config prints a full config).
"""


def _import_user_code(argv: list[str]) -> None:
    """Let class paths name the user's own modules (``model.class_path: my_module.MyModule``) as
    ``python -m`` would: the current directory and each ``--config`` file's folder go on
    ``sys.path`` (after the entries already there)."""
    folders = [Path.cwd()] + [Path(argv[i + 1]).resolve().parent for i, a in enumerate(argv[:-1]) if a == "--config"]
    folders += [Path(a.split("=", 1)[1]).resolve().parent for a in argv if a.startswith("--config=")]
    for folder in dict.fromkeys(str(f) for f in folders):
        if folder not in sys.path:
            sys.path.append(folder)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``flcore`` console script. Returns 0, or exits 2 on bad input."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if argv[0] == "--version":
        from flcore import __version__

        print(f"flcore {__version__}")
        return 0
    if argv[0] in ("sweep", "report"):
        from flcore import report, sweep

        code = (sweep if argv[0] == "sweep" else report).main(argv[1:])
        if code:
            raise SystemExit(code)
        return 0
    try:
        check_config_files(argv)
        _import_user_code(argv)
        FlcoreCLI(args=args)
    except ConfigError as err:
        print(f"flcore: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ClientFailureError as err:
        print(f"flcore: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except RunInterrupted as err:
        print(f"flcore: {err}; resume with --ckpt_path last", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None
    except Exception as err:
        from jsonargparse import ArgumentError

        if isinstance(err, ArgumentError):
            print(f"flcore: error: {_one_line(err)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
