"""How a pipeline step runs and what it leaves behind (used by :mod:`training.pipeline`).

* :func:`step_run` — the step's tracked run (:func:`training.tracking.tracked_run` owns its status:
  FINISHED / FAILED / KILLED), its resolved configuration saved as ``<out>/step.json`` and logged
  (params ``step.*`` + the file), a stale ``result.json`` removed first;
* :func:`save_result` — ``<out>/result.json`` (atomically, and to the run): the mark of a finished
  step;
* :func:`load_result` — a stored result whose recorded configuration equals the new one (what
  ``reuse=True`` returns instead of running again);
* :func:`jsonable` / :func:`from_jsonable` — frozen result dataclasses to JSON and back.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from training.tracking import Tracker, log_config, tracked_run

log = logging.getLogger(__name__)

STEP_FILE = "step.json"
RESULT_FILE = "result.json"
T = TypeVar("T")


@dataclass(frozen=True)
class Tracking:
    """Where a step's run is recorded: the MLflow experiment (``None``: the step's own default)
    and run name; ``track=False`` keeps everything in memory (tests, ``--no-mlflow``)."""

    experiment: str | None = None
    run_name: str | None = None
    track: bool = True
    system_metrics: bool = False


@dataclass(frozen=True)
class Registered:
    """A model version in the MLflow registry."""

    name: str
    version: str


def jsonable(x: Any) -> Any:
    """Dataclasses, paths, enums, mappings, tuples and numpy scalars → JSON-ready values."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, enum.Enum):
        return x.value
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _decode(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(args[0], v) if len(args) == 1 else v
    if tp is Path:
        return Path(v)
    if dataclasses.is_dataclass(tp):
        return from_jsonable(tp, v)  # type: ignore[arg-type]
    if origin is tuple:
        items = typing.get_args(tp)
        return tuple(_decode(items[0], x) for x in v) if items else tuple(v)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        kv = typing.get_args(tp)
        return {k: _decode(kv[1], x) for k, x in v.items()} if kv else dict(v)
    return v


def from_jsonable(cls: type[T], d: Mapping[str, Any]) -> T:
    """The inverse of :func:`jsonable` for the pipeline's result classes."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: _decode(hints[n], d[n]) for n in names if n in d})


def _canonical(config: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(jsonable(config), sort_keys=True, default=str))


def load_result(cls: type[T], out: Path, step: str, config: Mapping[str, Any]) -> T | None:
    """The stored result of ``step`` in ``out`` when its recorded configuration equals ``config``."""
    try:
        rec = json.loads((Path(out) / STEP_FILE).read_text())
        res = json.loads((Path(out) / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("step") != step or rec.get("config") != _canonical(config) or res.get("step") != step:
        return None
    try:
        return from_jsonable(cls, res["result"])
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s: stored result not readable (%s); running the step again", out, exc)
        return None


@contextmanager
def step_run(
    step: str, out: Path, config: Mapping[str, Any], tracking: Tracking | None, experiment: str, run_name: str
) -> Iterator[Tracker]:
    """One step's tracked run: removes a stale result, records the resolved configuration, yields
    the tracker; the run ends FAILED if the block raises (see :func:`tracked_run`)."""
    tr = tracking or Tracking()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)  # a failed re-run never leaves an old result behind
    with tracked_run(
        tr.experiment or experiment,
        tr.run_name or run_name,
        track=tr.track,
        system_metrics=tr.system_metrics,
        tags={"pipeline_step": step},
    ) as tracker:
        log_config(tracker, {"step": step, "config": _canonical(config)}, out / STEP_FILE)
        yield tracker


def save_result(tracker: Tracker, out: Path, step: str, result: Any) -> None:
    """``<out>/result.json`` (atomically) and to the run: the mark of a finished step."""
    path = Path(out) / RESULT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"step": step, "run_id": tracker.run_id, "result": jsonable(result)}, indent=2))
    os.replace(tmp, path)
    tracker.log_artifact(path)


def registered(name: str, version: str | None) -> Registered | None:
    return Registered(name, version) if version else None


def file_sha(path: Path) -> str | None:
    """sha256 of a file's bytes, ``None`` when it cannot be read (a config records what it used)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
