"""Reject unknown top-level config overrides (``--epochz 3`` silently adds a key in MONAI).

``python -m monai.bundle run ... --epochz 3`` merges ``epochz`` into the config and trains with the default
``epochs``. :func:`check_overrides` compares override keys with the top-level keys the config files define and
raises a ``KeyError`` naming the key and the closest defined one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["defined_keys", "check_overrides"]

# keys MONAI's `run` / ConfigWorkflow pass next to the user's overrides
_RUNNER_KEYS = frozenset({"config_file", "meta_file", "logging_file", "tracking", "workflow_type", "workflow_name"})


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
