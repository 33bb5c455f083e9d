"""Inference settings of a trained checkpoint: read from the run config it was trained with, never from code.

A checkpoint written by `common.run.train` carries its resolved run config (`run_config`). The settings a model
was trained for (crop margin, slice context, scale factor, fidelity switches, ...) are read from there, so that
`predict` and `eval` run a checkpoint the same way. Settings of the evaluation protocol that training does not
record (rounds, stop rule, threshold, ...) come from the `eval:` block of the project's `conf/<project>/eval.yaml`,
resolved against the checkpoint's run config (so `margin: ${model.margin}` is the checkpoint's margin), the very
values `eval.py` uses. A command-line value overrides either and says so in one line on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from common.errors import DataError

CONF_ROOT = Path(__file__).resolve().parents[1] / "conf"
_MISSING = object()


class CheckpointSettings:
    """The inference settings of one checkpoint.

    Args:
        source: the checkpoint file (named in errors and in override notes).
        run_config: the checkpoint's `run_config` (None or {} for a plain state dict).
        project: when given, the `eval:` block of `conf/<project>/eval.yaml` supplies the protocol settings
            the run config lacks.
    """

    def __init__(self, source: str | os.PathLike, run_config: Mapping[str, Any] | None,
                 project: str | None = None) -> None:
        self.source = str(source)
        self.config: DictConfig = OmegaConf.create(dict(run_config or {}))
        if project is not None:
            protocol = _raw(OmegaConf.select(OmegaConf.load(CONF_ROOT / project / "eval.yaml"), "eval"))
            stored = _raw(self.config.get("eval"))
            # The stored block wins; interpolations resolve against the checkpoint's own config on `select`.
            self.config = OmegaConf.merge(self.config, {"eval": {**protocol, **stored}})  # type: ignore[assignment]

    def stored(self, key: str, default: Any = _MISSING) -> Any:
        """Returns the value of the dotted `key` in the checkpoint's settings (`default` when it has none).

        Raises:
            DataError: the key is absent and no default is given.
        """
        value = OmegaConf.select(self.config, key, default=_MISSING, throw_on_resolution_failure=False)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise DataError(self.source, f"the checkpoint's run config has no {key}")
            return default
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value

    def get(self, key: str, override: Any = None, flag: str | None = None, default: Any = _MISSING) -> Any:
        """Returns the checkpoint's `key`, or `override` when given (printing one line when they differ).

        Args:
            key: dotted key in the run config, e.g. "model.margin" or "eval.max_rounds".
            override: the command-line value (None: not given).
            flag: how the user wrote the override, for the note (default: the key).
            default: the value when the checkpoint has none (omit to make it an error).

        Raises:
            DataError: no override, and the checkpoint has no value and no default is given.
        """
        if override is None:
            return self.stored(key, default)
        return self.choose(key, self.stored(key, None), override, flag)

    def choose(self, key: str, stored: Any, override: Any = None, flag: str | None = None) -> Any:
        """Returns `override` when given (printing one line when it differs from `stored`), else `stored`.

        For settings derived from the run config (e.g. the first of a list), `key` naming where `stored` came from.
        """
        if override is None:
            return stored
        if stored is None or str(stored) != str(override):
            said = "has none" if stored is None else f"has {stored}"
            print(f"note: {flag or key} {override} overrides the checkpoint's {key} ({self.source} {said})",
                  file=sys.stderr)
        return override


def given_settings(node: Mapping[str, Any] | DictConfig, project: str, block: str = "eval") -> dict[str, Any]:
    """Returns the settings of a composed eval config's `block` that differ from conf/<project>/eval.yaml's own.

    Those are the ones the command line (or an experiment) set: they override the checkpoint's. A value is
    compared as written, before interpolation, so `margin: ${model.margin}` left as it is counts as not given
    (the checkpoint's margin applies, whatever `model.margin` the eval config composes).

    Args:
        node: the composed `cfg.eval` (or any block), interpolations unresolved.
        project: whose `conf/<project>/eval.yaml` holds the defaults.
        block: the block of that file to compare with.

    Returns:
        setting name -> resolved value, for the given settings only.
    """
    defaults = _raw(OmegaConf.select(OmegaConf.load(CONF_ROOT / project / "eval.yaml"), block))
    node = node if isinstance(node, DictConfig) else OmegaConf.create(dict(node))
    return {str(key): _resolved(node, str(key)) for key, value in _raw(node).items()
            if key not in defaults or value != defaults[key]}


def _raw(node: Any) -> dict[Any, Any]:
    raw = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
    return dict(raw) if isinstance(raw, Mapping) else {}


def _resolved(node: DictConfig, key: str) -> Any:
    value = node[key]
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
