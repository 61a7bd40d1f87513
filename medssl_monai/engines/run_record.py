"""What defines a training run: recorded in ``resume.pt`` and next to ``model.pt``, checked on resume.

Without a record, ``models/resume.pt`` stands in for any later run in the same folder: train from random init,
run again with ``--pretrained_ckpt``, and the finished run "resumes" with nothing to do, keeping the random-init
``model.pt``. A *run record* holds the resolved values of the settings that define a run; the
:class:`~medssl_monai.engines.resume.ResumeHandler` stores it in ``resume.pt`` and refuses to resume a file whose
record differs (:func:`check_resume_record`), and :class:`ModelRecordWriter` writes it to ``model.pt.json`` next to
every ``model*.pt`` the run writes, so a model file names the data it was trained on (``model.pt`` itself stays
a plain ``state_dict`` for ``weights_only=True`` loaders). :func:`check_model_data` compares that with the data an
evaluation or inference run reads.

What a record holds (:func:`build_run_record`, from the ``ConfigParser`` of the run, after command-line
overrides):

* ``settings`` (compared on resume): every top-level key whose value is a setting (a number, string, bool,
  ``None``, a list of them, or an expression giving one), resolved, except the run-control keys in
  :data:`RUN_CONTROL_KEYS`; ``dataset_dir`` as an absolute path; ``pretrained_ckpt`` as path, size and SHA-256
  (the content counts, not where it lies); and the definitions of :data:`COMPONENT_KEYS` (``network_def``,
  ``encoder``, ``method``, ``loss``, ``optimizer``) as written, with their ``@`` references unresolved (the keys
  they refer to are compared themselves). A variant config that replaces the network (``superimage.yaml``) or the
  method (``videomae.yaml``) or a ``--network_def#...`` override therefore changes the record.
* ``info`` (not compared): bundle name and version, the config file names (where the command line gives them),
  whether ``dataset_dir`` is built-in synthetic data, creation time, library versions.

Limits: overrides of nested ids outside those components (``--train#dataloader#batch_size 2``) are not recorded;
the data is identified by its folder, not its content.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine

from medssl_monai.engines.checkpoint import atomic_write

__all__ = [
    "RECORD_VERSION",
    "RUN_CONTROL_KEYS",
    "COMPONENT_KEYS",
    "RunMismatchError",
    "build_run_record",
    "current_run_record",
    "find_config_parser",
    "compare_settings",
    "check_resume_record",
    "stop_run",
    "file_fingerprint",
    "is_synthetic_dataset",
    "record_path",
    "write_json_atomic",
    "ModelRecordWriter",
    "check_model_data",
]

logger = logging.getLogger(__name__)

RECORD_VERSION = 1

#: Top-level keys that may differ between a run and its resume, with why. Anything else that is a setting
#: defines the run. Several change the numbers only at rounding level or change which random stream draws the
#: same augmentation; ``val_interval`` changes which epochs are validated (so which epoch ``model.pt`` can come
#: from, and when early stopping can stop), not the training steps.
RUN_CONTROL_KEYS: Mapping[str, str] = {
    "epochs": "extends (or shortens) the run: the trainer continues to the new count",
    "resume": "whether to resume at all",
    "checkpoint_every": "how often resume.pt is written",
    "bundle_root": "where files go",
    "output_dir": "where logs go",
    "ckpt_dir": "where checkpoints go",
    "eval_dir": "where reports go",
    "cache_dir": "where decoded clips are cached",
    "cache_rate": "how much decoded data is kept in memory",
    "num_workers": "how many processes load the data",
    "persistent_workers": "whether loader processes are kept between epochs",
    "log_every": "how often the loss is logged",
    "val_interval": "how often validation runs",
    "val_batch_size": "validation batching",
    "embedding_every": "TensorBoard projector frequency",
    "embedding_samples": "TensorBoard projector size",
    "monitor_every": "representation monitor frequency (it does not touch the training state)",
    "monitor_samples": "representation monitor size",
    "on_bad_sample": "what an unreadable sample does",
    "max_bad_fraction": "how much unreadable data stops the run (raised to go on after such a stop)",
    "augment_on": "where the augmentation runs (same augmentation, other random stream)",
    "amp": "mixed precision (device speed setting)",
    "fused_optimizer": "fused optimizer kernels (device speed setting)",
    "channels_last": "memory format (device speed setting)",
    "device": "per process",
    "rank": "per process",
    "is_not_rank0": "per process",
    "backend": "per process",
    "tracking_uri": "experiment tracking",
    "experiment_name": "experiment tracking",
    "run_name": "experiment tracking",
    "save_execute_config": "experiment tracking",
    "execute_config": "experiment tracking",
}
#: top-level mappings compared as written (the network, encoder, SSL method, loss and optimizer definitions)
COMPONENT_KEYS = ("network_def", "encoder", "method", "loss", "optimizer")
_STRUCTURAL_KEYS = frozenset({"imports", "initialize", "run", "finalize", "_meta_", "_requires_"})
_DATA_KEY = "dataset_dir"
_FILE_KEYS = ("pretrained_ckpt",)
_REFERENCE = re.compile(r"@([\w#:]+)")  # MONAI's reference ids: names joined by "#" (or "::")
_MISSING = object()
_SKIP = object()


class RunMismatchError(ValueError):
    """``resume.pt`` is of a run with other settings; the message names each difference and the remedies."""


# ---- building a record ----------------------------------------------------------------------------------------


def find_config_parser() -> Any:
    """The ``ConfigParser`` that is building the caller (innermost on the call stack), or ``None``.

    MONAI gives a component no handle on the parser that instantiates it, and bundles run through several entry
    points (``python -m monai.bundle run``, ``ConfigWorkflow`` from python, MONAI Label); each resolves components
    inside ``ConfigParser.get_parsed_content``, whose frame holds the parser.
    """
    from monai.bundle import ConfigParser

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            return candidate
        frame = frame.f_back
    return None


def _command_line_config_files() -> list[str] | None:
    """The config files of this process's ``python -m monai.bundle run`` / ``medssl_monai run`` call, if any."""
    from monai.bundle import scripts

    frame = sys._getframe(1)
    while frame is not None:  # monai.bundle.scripts.run (called by fire, our CLI or python) holds config_file
        if frame.f_code is scripts.run.__code__:
            files = frame.f_locals.get("config_file")
            args_file = frame.f_locals.get("args_file")
            if files is None and args_file:
                from monai.bundle import ConfigParser

                files = ConfigParser.load_config_file(str(args_file)).get("config_file")
            if files is None:
                return None
            return [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
        frame = frame.f_back
    return None


def _json_value(value: Any) -> Any:
    """``value`` as JSON data (tuples as lists, paths as strings), or ``_SKIP`` for objects (modules, devices)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return _json_value(value.item())
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        items = {k: _json_value(v) for k, v in value.items()}
        return _SKIP if any(v is _SKIP for v in items.values()) else items
    return _SKIP


def _raw_definition(raw: Any) -> Any:
    """A component's config as written, as JSON data (anything else as its ``repr``)."""
    if isinstance(raw, Mapping):
        return {str(k): _raw_definition(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [_raw_definition(v) for v in raw]
    value = _json_value(raw)
    return repr(raw) if value is _SKIP else value


def _has_mapping(raw: Any) -> bool:
    return isinstance(raw, Mapping) or (isinstance(raw, (list, tuple)) and any(_has_mapping(v) for v in raw))


def _is_setting(raw: Any, config: Mapping[str, Any]) -> bool:
    """Whether a top-level entry is a setting: not a component, not an expression on one (``network``)."""
    if _has_mapping(raw):
        return False
    if isinstance(raw, str) and raw[:1] in ("$", "@"):
        for ref in _REFERENCE.findall(raw):
            top = re.split("#|::", ref, maxsplit=1)[0]
            if top != _DATA_KEY and _has_mapping(config.get(top)):
                return False  # e.g. network: "$@network_def.to(@device)": resolving it gives an object
    return True


def is_synthetic_dataset(path: Any) -> bool:
    """Whether ``path`` is a folder of the built-in synthetic data (it holds the generator's marker file)."""
    from medssl_monai.data.synthetic import MARKER_NAME
    from medssl_monai.data.synthetic.arrays import _MARKER as ARRAYS_MARKER

    if not isinstance(path, (str, os.PathLike)) or not str(path):
        return False
    return any((Path(path) / marker).is_file() for marker in (MARKER_NAME, ARRAYS_MARKER))


def _data_value(value: Any) -> Any:
    """A data folder as an absolute path (a list of files stays a list)."""
    if isinstance(value, (str, os.PathLike)) and str(value):
        return str(Path(value).expanduser().resolve())
    return _json_value(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """``{"path", "size", "sha256"}`` of a file (``{"path", "missing": True}`` if absent; ``None`` for ``None``)."""
    if path is None or not str(path):
        return None
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        return {"path": str(p), "missing": True}
    return {"path": str(p), "size": p.stat().st_size, "sha256": _sha256(p)}


def build_run_record(parser: Any, config_files: Sequence[str] | None = None) -> dict[str, Any]:
    """The run record of a bundle run from its ``ConfigParser`` (see the module docstring).

    Args:
        parser: the run's ``monai.bundle.ConfigParser`` (overrides applied); keys are resolved through it.
        config_files: the config files, kept as names in ``info`` (not compared).

    Returns:
        ``{"record_version", "settings", "info"}``, JSON data only.
    """
    config = parser.get()
    settings: dict[str, Any] = {}
    for key, raw in config.items():
        if key in RUN_CONTROL_KEYS or key in _STRUCTURAL_KEYS:
            continue
        if key in COMPONENT_KEYS and isinstance(raw, Mapping):
            settings[key] = _raw_definition(raw)
            continue
        if key != _DATA_KEY and not _is_setting(raw, config):
            continue
        try:
            value = parser.get_parsed_content(key)
        except Exception as e:  # e.g. a multi-GPU key needing the process group: the record must not fail a run
            logger.debug("run record: %s not resolved (%r); left out", key, e)
            continue
        if key == _DATA_KEY:
            value = _data_value(value)
        elif key in _FILE_KEYS:
            value = file_fingerprint(value) if isinstance(value, (str, os.PathLike)) else _json_value(value)
        else:
            value = _json_value(value)
        if value is not _SKIP:
            settings[key] = value
    meta = config.get("_meta_") if isinstance(config.get("_meta_"), Mapping) else {}
    info: dict[str, Any] = {
        "bundle": meta.get("name"),
        "bundle_version": meta.get("version"),
        "config_files": [Path(f).name for f in config_files] if config_files else None,
        "synthetic_data": is_synthetic_dataset(settings.get(_DATA_KEY)),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    return {"record_version": RECORD_VERSION, "settings": settings, "info": info}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("medssl-monai", "monai", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def current_run_record() -> dict[str, Any] | None:
    """The record of the run whose ``ConfigParser`` is building the caller, or ``None`` outside one."""
    parser = find_config_parser()
    if parser is None:
        return None
    return build_run_record(parser, _command_line_config_files() or _argv_config_files())


def _argv_config_files() -> list[str] | None:
    """``--config_file`` of ``python -m monai.bundle run`` in ``sys.argv`` (e.g. a ``torchrun`` worker)."""
    from medssl_monai.config_checks import _is_monai_bundle_main, parse_bundle_command_line

    if not _is_monai_bundle_main(sys.argv):
        return None
    try:
        parsed = parse_bundle_command_line(sys.argv)
    except Exception:  # informational only
        return None
    files = parsed[1].get("config_file") if parsed else None
    if not files:
        return None
    return [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]


# ---- comparing records ----------------------------------------------------------------------------------------


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, Mapping) and isinstance(new, Mapping) and "sha256" in old and "sha256" in new:
        return old["sha256"] == new["sha256"] and old.get("size") == new.get("size")  # the content, not the place
    return old == new


def compare_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every run-defining setting that differs (a missing key differs too).

    Run-control keys (:data:`RUN_CONTROL_KEYS`) are ignored; a file is compared by size and SHA-256, not path.
    """
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RUN_CONTROL_KEYS:
            continue
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if not _same(a, b):
            out.append((key, a, b))
    return out


def _show(value: Any, limit: int = 160) -> str:
    if value is _MISSING:
        return "<not set>"
    if isinstance(value, Mapping) and "path" in value and ("sha256" in value or "missing" in value):
        if value.get("missing"):
            return f"{value['path']} (missing)"
        return f"{value['path']} ({value['size']} bytes, sha256 {value['sha256'][:12]})"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_resume_record(path: str | Path, saved: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> None:
    """Stop when the checkpoint ``path`` is of another run than ``current`` (its settings differ).

    A checkpoint without a record (written before records existed) resumes with a warning; a run without a record
    (a handler built outside a bundle config) is not checked.

    Raises:
        RunMismatchError: naming each differing key with its saved and current value and the remedies. In a
            ``python -m monai.bundle`` or ``python -m medssl_monai`` process the message goes to stderr and the
            process exits with status 2 (``SystemExit``).
    """
    if current is None:
        return
    if not saved or "settings" not in saved:
        logger.warning(
            f"resume: {path} holds no run record (written by an older version): cannot check that it is of a run "
            "with these settings; resuming it. Use --resume False to start over if the settings changed."
        )
        return
    diffs = compare_settings(saved["settings"], current["settings"])
    if not diffs:
        return
    folder = Path(path).parent
    lines = "\n".join(f"  {key}: {_show(a)} -> {_show(b)}" for key, a, b in diffs)
    message = (
        f"{path} is of another run: {len(diffs)} setting(s) differ from this one (saved -> now):\n{lines}\n"
        f"Resuming would continue (or, if finished, keep) that run in place of this one. To start this run "
        f"over in {folder}, replacing its files, add --resume False; to keep that run, give this one another "
        "--bundle_root or --ckpt_dir. (epochs, num_workers, log_every, val_interval, checkpoint_every and the "
        "other run-control settings in docs/reliability.md may change on a resume.)"
    )
    stop_run(RunMismatchError(message))


def stop_run(error: Exception) -> None:
    """Raise ``error``; in a ``python -m monai.bundle`` or ``python -m medssl_monai`` process print its message to
    stderr and exit with status 2 instead (the message is the point; a traceback around it would hide it)."""
    from medssl_monai.engines.loader_check import _is_command_line_run

    if _is_command_line_run():
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    raise error


# ---- the record next to model files ---------------------------------------------------------------------------


def record_path(model_path: str | os.PathLike) -> Path:
    """The record file of a model file: ``model.pt`` -> ``model.pt.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON atomically (:func:`~medssl_monai.engines.checkpoint.atomic_write`: the same temporary
    file naming, so the same start-up clean-up removes one a crash left)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class ModelRecordWriter:
    """Write ``<model file>.json`` (the run record, the model file's size and SHA-256, the trainer's epoch and
    iteration) for every model file in ``save_dir`` that this run writes.

    :meth:`snapshot` (at start) notes the files already there, so a model of an earlier run never gets this run's
    record; :meth:`update` (after the savers, at every checkpoint and at the end) writes a record for each file
    changed since.

    Args:
        save_dir: the checkpoint folder.
        record: the run record (:func:`build_run_record`).
        pattern: glob of the model files (``model*.pt``: ``model.pt``, ``model_final.pt``, ...).
    """

    def __init__(self, save_dir: str | os.PathLike, record: Mapping[str, Any], pattern: str = "model*.pt") -> None:
        self.save_dir = Path(save_dir)
        self.record = dict(record)
        self.pattern = pattern
        self._seen: dict[str, tuple[int, int] | None] = {}

    def _files(self) -> list[Path]:
        return sorted(p for p in self.save_dir.glob(self.pattern) if p.is_file())

    def snapshot(self) -> None:
        """Remember the model files present now (they are not this run's until rewritten)."""
        self._seen = {p.name: _stat_key(p) for p in self._files()}

    def update(self, engine: Engine | None = None) -> list[Path]:
        """Write the record of every model file changed since the last call; returns the records written."""
        written = []
        for p in self._files():
            key = _stat_key(p)
            if key is None or self._seen.get(p.name) == key:
                continue
            data = {
                **self.record,
                "model_file": {"name": p.name, "size": key[1], "sha256": _sha256(p)},
            }
            if engine is not None:
                data["trainer"] = {"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration)}
            written.append(write_json_atomic(data, record_path(p)))
            self._seen[p.name] = key
        return written


def check_model_data(model_path: str | os.PathLike, data: Any) -> dict[str, Any] | None:
    """Warn when an evaluation or inference run reads other data than ``model_path`` was trained on.

    Reads ``<model_path>.json`` (:class:`ModelRecordWriter`): when its ``dataset_dir`` differs from ``data`` (the
    run's ``dataset_dir``, or its list of input files) one WARNING names both (and says which is the built-in
    synthetic data). A model without a record, or whose record is of another file (SHA-256), is logged as of
    unknown training data.

    Returns:
        The model's record, or ``None`` when there is none that matches the file.
    """
    model = Path(model_path)
    sidecar = record_path(model)
    if not model.is_file():
        return None  # the checkpoint loader reports a missing model
    if not sidecar.is_file():
        logger.info(f"{model} has no run record ({sidecar.name}): the data it was trained on is unknown")
        return None
    try:
        record = json.loads(sidecar.read_text())
        trained_file = record["model_file"]
        trained_on = record["settings"].get(_DATA_KEY)
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning(f"{sidecar}: unreadable run record ({e!r}); the data {model} was trained on is unknown")
        return None
    if trained_file.get("size") != model.stat().st_size or trained_file.get("sha256") != _sha256(model):
        logger.warning(
            f"{sidecar} is the record of another {model.name} (size or SHA-256 differ: the model file was replaced "
            "after training); the data it was trained on is unknown"
        )
        return None
    now = _data_value(data)
    if not _within(now, trained_on):

        def name(value: Any) -> str:
            return _show(value) + (" (the built-in synthetic data)" if is_synthetic_dataset(value) else "")

        logger.warning(f"{model} was trained on {name(trained_on)}; this run reads other data: {name(now)}")
    else:
        logger.info(f"{model} was trained on {_show(trained_on)}; this run reads {_show(now)}")
    return record


def _within(data: Any, folder: Any) -> bool:
    """Whether ``data`` (a path or a list of paths) is ``folder`` or lies inside it."""
    if not isinstance(folder, str):
        return data == folder
    paths = data if isinstance(data, list) else [data]
    if not paths or not all(isinstance(p, str) for p in paths):
        return False
    return all(Path(p).expanduser().resolve().is_relative_to(folder) for p in paths)
