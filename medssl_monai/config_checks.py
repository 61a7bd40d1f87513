"""Reject unknown top-level config overrides (``--epochz 3`` silently adds a key in MONAI).

``python -m monai.bundle run ... --epochz 3`` merges ``epochz`` into the config and trains with the default
``epochs``. :func:`check_overrides` compares override keys with the top-level keys the config files define and
raises a ``KeyError`` naming the key and the closest defined one. :func:`check_command_line`, the first entry of
every bundle's ``initialize``, applies it to the command line of MONAI's own runner (``python -m monai.bundle run``,
also under ``torchrun``), which has no such check.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser

__all__ = [
    "defined_keys",
    "check_overrides",
    "check_command_line",
    "parse_bundle_command_line",
    "parse_overrides",
    "tracking_keys",
]

logger = logging.getLogger(__name__)

# parameters of monai.bundle.scripts.run, in its positional order (fire fills them from positional arguments)
_RUN_PARAMS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file")
# monai.bundle.scripts.run_workflow's parameters, in order
_RUN_WORKFLOW_PARAMS = ("workflow_name", "args_file")
# keys MONAI's `run` / `run_workflow` / `create_workflow` / ConfigWorkflow take as arguments: not config overrides
_RUNNER_KEYS = frozenset({*_RUN_PARAMS, *_RUN_WORKFLOW_PARAMS, "workflow_type", "properties_path"})
_META_KEY = "_meta_"  # ConfigWorkflow reads metadata.json under this key; `--_meta_#version 1` is an override


# a separator before the next ``key=``: splits ``a=1, b=/x/y`` but not ``milestones=[45, 60]``
_PAIR_SPLIT = re.compile(r"[,\s]+(?=[A-Za-z_][\w#:.-]*=)")
_OVERRIDES_HELP = (
    "expected a mapping: YAML '{dataset_dir: /data/x, batch_size: 8}', JSON '{\"batch_size\": 8}' "
    "or key=value pairs 'dataset_dir=/data/x,batch_size=8'"
)


def parse_overrides(value: str | Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    """Config overrides given as a mapping, a YAML flow mapping, JSON or ``key=value`` pairs.

    fire turns ``--overrides '{batch_size: 2}'`` into a dict but leaves ``'{dataset_dir: /data/x}'`` a string
    (``/data/x`` is no python literal), so strings are parsed here with ``yaml.safe_load``; values of
    ``key=value`` pairs are YAML scalars too (``8`` is an int, ``true`` a bool, ``/data/x`` a string).

    Args:
        value: ``None``, a mapping, a string, or a list of ``key=value`` strings.

    Returns:
        ``{config id: value}`` (empty for ``None`` or an empty string).

    Raises:
        ValueError: the input is not one of these forms, or a key is empty.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        out = dict(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if text[0] in "{[":
            try:
                parsed = yaml.safe_load(text)
            except yaml.YAMLError as err:
                try:  # JSON that YAML rejects (e.g. tabs as whitespace)
                    parsed = json.loads(text)
                except ValueError:
                    reason = " ".join(str(getattr(err, "problem", None) or err).split())
                    raise ValueError(f"could not parse overrides {value!r} ({reason}); {_OVERRIDES_HELP}") from None
            if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
                return parse_overrides(parsed)
            if not isinstance(parsed, dict):
                raise ValueError(f"overrides {value!r} are not a mapping; {_OVERRIDES_HELP}")
            out = parsed
        else:
            return parse_overrides(_PAIR_SPLIT.split(text))
    elif isinstance(value, Sequence):
        out = {}
        for pair in value:
            key, eq, raw = str(pair).strip().partition("=")
            if not eq:
                raise ValueError(f"override {pair!r} is not key=value; {_OVERRIDES_HELP}")
            try:
                out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                out[key.strip()] = raw.strip()  # an odd value is a plain string, as on MONAI's own command line
    else:
        raise ValueError(f"overrides of type {type(value).__name__} ({value!r}); {_OVERRIDES_HELP}")
    bad = [k for k in out if not isinstance(k, str) or not k.strip()]
    if bad:
        raise ValueError(f"override keys must be non-empty strings, got {bad!r}; {_OVERRIDES_HELP}")
    return out


def defined_keys(config_files: str | Path | Sequence[str | Path]) -> set[str]:
    """Top-level keys defined by ``config_files`` (merged like MONAI does)."""
    files = [config_files] if isinstance(config_files, (str, Path)) else list(config_files)
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return set(parser.get().keys())


def check_overrides(
    config_files: str | Path | Sequence[str | Path],
    overrides: Mapping[str, Any] | Iterable[str],
    allowed: Iterable[str] = (),
) -> None:
    """Raise ``KeyError`` for an override whose top-level key the config does not define.

    Args:
        config_files: the bundle config file(s) the run reads.
        overrides: the override mapping (or its keys); ``a#b`` overrides check their first part ``a``.
        allowed: extra keys to accept.

    Raises:
        KeyError: ``unknown config key 'epochz' (did you mean 'epochs'?)``.
    """
    known = defined_keys(config_files) | set(allowed) | _RUNNER_KEYS
    for key in overrides:
        top = str(key).split("#", 1)[0].split("::", 1)[0]
        if top in known:
            continue
        close = difflib.get_close_matches(top, sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown config key {top!r}{hint}; the config defines: {', '.join(sorted(known))}")


def _is_monai_bundle_main(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is that of ``python -m monai.bundle`` (``torchrun -m monai.bundle`` workers too)."""
    return bool(argv) and Path(argv[0]).parts[-3:] == ("monai", "bundle", "__main__.py")


def _is_flag(arg: str) -> bool:
    # fire.core._IsFlag: a leading hyphen that is not a negative number
    return arg.startswith("--") or (len(arg) > 1 and arg[0] == "-" and arg[1].isascii() and arg[1].isalpha())


def _parse_value(value: str) -> Any:
    """A command-line value as fire passes it on (python literals, else the string)."""
    try:
        from fire.parser import DefaultParseValue
    except ImportError:  # without fire MONAI's runner does not start at all; keep the string
        return value
    return DefaultParseValue(value)


def parse_bundle_command_line(argv: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    """The command and keyword arguments fire passes to ``monai.bundle``'s ``run`` / ``run_workflow``.

    Mirrors fire 0.7 (``fire.core._ParseKeywordArgs`` / ``_ParseArgs``) for a function with ``**kwargs``:
    ``--key value``, ``--key=value``, ``--flag`` (True) / ``--noflag`` (False) when no value follows, ``-`` in a
    key becomes ``_``, positional arguments fill the named parameters in order, arguments after a final ``--``
    are fire's own flags and a lone ``-`` ends the call's arguments.

    Args:
        argv: ``sys.argv``, with the program (``.../monai/bundle/__main__.py``) first.

    Returns:
        ``(command, kwargs)`` with parsed values, or ``None`` for another command than ``run`` / ``run_workflow``.
    """
    args = list(argv[1:])
    if "--" in args:  # fire.parser.SeparateFlagArgs: after the last "--" come fire's own flags
        args = args[: len(args) - 1 - args[::-1].index("--")]
    if not args or args[0] not in ("run", "run_workflow"):
        return None
    command, args = args[0], args[1:]
    if "-" in args:  # fire's default separator ends the arguments of this call
        args = args[: args.index("-")]
    params = _RUN_PARAMS if command == "run" else _RUN_WORKFLOW_PARAMS
    kwargs: dict[str, Any] = {}
    positional: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if not _is_flag(arg):
            positional.append(arg)
            continue
        key, eq, value = arg.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not eq and (i + 1 == len(args) or _is_flag(args[i + 1])):  # boolean syntax
            if key not in params and key.startswith("no"):
                key, value = key[2:], "False"
            else:
                value = "True"
        elif not eq:
            value, skip = args[i + 1], True
        kwargs[key] = value
    for name in params:  # fire fills the parameters not given by name from the positional arguments
        if name not in kwargs and positional:
            kwargs[name] = positional.pop(0)
    return command, {k: _parse_value(v) for k, v in kwargs.items()}


def tracking_keys(tracking: Any) -> set[str]:
    """Top-level keys ``ConfigWorkflow`` adds for ``tracking`` (e.g. mlflow's ``tracking_uri``, ``run_name``)."""
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    else:
        settings = ConfigParser.load_config_files(tracking)
    handlers = settings.get("handlers_id", {})
    return {k for k in settings.get("configs", {}) if k not in handlers}


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Exit with an error when MONAI's bundle runner was given an override key that the configs do not define.

    Does something only in a process started as ``python -m monai.bundle run`` / ``run_workflow`` (also a
    ``torchrun -m monai.bundle`` worker); in any other process (pytest, ``python -m medssl_monai run``, which checks
    itself, ``ConfigWorkflow`` from python) it returns at once. Parses ``argv`` as fire does
    (:func:`parse_bundle_command_line`), merges ``--args_file`` (its keys are overrides too, the command line wins),
    reads the ``config_file`` list and calls :func:`check_overrides`. MONAI's runner arguments (``config_file``,
    ``meta_file``, ``logging_file``, ``tracking``, ``workflow_type``, ``args_file``, ``run_id``, ...) and, with
    ``--tracking``, the tracking settings' keys (``tracking_uri``, ``experiment_name``, ``run_name``, ...) are accepted.
    A command line this cannot read is left to MONAI (never blocks a run).

    Args:
        argv: the command line; default ``sys.argv``.

    Raises:
        SystemExit: (code 2) ``unknown config key 'epochz' (did you mean 'epochs'?)``, printed to stderr.
    """
    argv = list(sys.argv if argv is None else argv)
    if not _is_monai_bundle_main(argv):
        return
    try:
        parsed = parse_bundle_command_line(argv)
        if parsed is None:
            return
        command, kwargs = parsed
        args_file = kwargs.get("args_file")
        merged: dict[str, Any] = dict(ConfigParser.load_config_file(str(args_file))) if args_file else {}
        merged.update({k: v for k, v in kwargs.items() if v is not None})  # monai's update_kwargs: CLI wins
        if command == "run_workflow" and merged.get("workflow_name") not in (None, "ConfigWorkflow"):
            return  # another workflow class: its arguments are not known here
        config_file = merged.get("config_file")
        if not config_file:
            return
        files = [config_file] if isinstance(config_file, (str, Path)) else list(config_file)
        allowed = {_META_KEY} | (tracking_keys(merged["tracking"]) if merged.get("tracking") else set())
    except Exception as e:  # a parsing gap here must not stop a run MONAI accepts
        logger.warning(f"check_command_line: could not check the command line ({e!r}); overrides not checked")
        return
    overrides = [k for k in merged if k not in _RUNNER_KEYS]
    try:
        check_overrides(files, overrides, allowed=allowed)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
