"""Experiment tracking: one small interface, an MLflow implementation (SQLite by default, any
``MLFLOW_TRACKING_URI`` otherwise) and a null one for tests that do not need a store.

Registry: every trained member is registered as a model version of ``silencio-<member>``;
aliases ``candidate`` → ``staging`` → ``production``. Promotion to ``production`` refuses a model
whose validation metric is below the current production model's unless forced.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from shared_features.paths import home
from training.errors import TrainingError

log = logging.getLogger(__name__)
ALIASES = ("candidate", "staging", "production")
VAL_METRIC = "best_val_roc_auc"


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def register(self, name: str, artifact_path: str, alias: str | None = "candidate") -> str | None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Keeps what would be logged in memory (tests, ``--no-mlflow``)."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: list[str] = []
        self.tags: dict[str, str] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append(str(path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def register(self, name: str, artifact_path: str, alias: str | None = "candidate") -> str | None:
        return None

    def end(self, status: str = "FINISHED") -> None:
        pass


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or the embedded default ``sqlite:///$SILENCIO_HOME/mlflow/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    d = home() / "mlflow"
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


def artifact_root() -> str:
    d = home() / "mlflow" / "artifacts"
    d.mkdir(parents=True, exist_ok=True)
    return d.as_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class MLflowTracker:
    def __init__(self, experiment: str, run_name: str | None = None, system_metrics: bool = True) -> None:
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri())
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            kwargs = {} if os.environ.get("MLFLOW_TRACKING_URI") else {"artifact_location": artifact_root()}
            exp_id = mlflow.create_experiment(experiment, **kwargs)
        else:
            exp_id = exp.experiment_id
        self._run = mlflow.start_run(
            experiment_id=exp_id, run_name=run_name, log_system_metrics=system_metrics
        )
        self.run_id: str | None = self._run.info.run_id
        mlflow.set_tags({"git_commit": git_commit()})

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: (str(v)[:5000]) for k, v in params.items()}
        self._mlflow.log_params(flat)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def register(self, name: str, artifact_path: str, alias: str | None = "candidate") -> str | None:
        version = register_artifact(self.run_id or "", name, artifact_path)
        if alias:
            set_alias(name, version, alias, force=True)
        return version

    def end(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


@contextmanager
def tracked_run(
    experiment: str,
    run_name: str | None = None,
    *,
    track: bool = True,
    system_metrics: bool = False,
    tags: dict[str, str] | None = None,
) -> Iterator[Tracker]:
    """The one owner of a tracked run's status: the block's tracker ends ``FINISHED`` when the
    block returns, ``KILLED`` on ``KeyboardInterrupt``, ``FAILED`` on any other exception (which
    propagates). ``track=False`` gives a :class:`NullTracker` (nothing leaves the process)."""
    tracker: Tracker = (
        MLflowTracker(experiment, run_name=run_name, system_metrics=system_metrics)
        if track
        else NullTracker()
    )
    status = "FAILED"
    try:
        if tags:
            tracker.set_tags(tags)
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            log.info("run %s (%s) ended %s", tracker.run_id, run_name, status)
        tracker.end(status)


def log_config(tracker: Tracker, config: dict[str, Any], path: Path) -> None:
    """Save a step's resolved configuration as ``path`` (JSON, beside its outputs) and to the run
    (flattened ``a.b`` params, and the file as an artifact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    tracker.log_params(flatten(config, "step."))
    tracker.log_artifact(path)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and scalars stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _client():  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def register_artifact(run_id: str, name: str, artifact_path: str = "model") -> str:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``; returns it."""
    from mlflow.exceptions import MlflowException

    c = _client()
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="El Silencio ensemble member (silencio train)")
    run = c.get_run(run_id)
    mv = c.create_model_version(name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id)
    return str(mv.version)


def set_alias(name: str, version: str, alias: str, force: bool = False) -> None:
    """Point ``alias`` at ``version``. ``production`` refuses a model whose validation metric is
    below the current production model's unless ``force``."""
    from mlflow.exceptions import MlflowException

    if alias not in ALIASES:
        raise TrainingError(f"alias must be one of {ALIASES}, got {alias!r}")
    c = _client()
    if alias == "production" and not force:
        try:
            cur = c.get_model_version_by_alias(name, "production")
        except MlflowException:
            cur = None
        if cur is not None and cur.version != version:
            new_m = _val_metric(c, c.get_model_version(name, version).run_id)
            old_m = _val_metric(c, cur.run_id)
            if new_m is None or (old_m is not None and new_m < old_m):
                raise TrainingError(
                    f"{name} v{version} has {VAL_METRIC}={new_m} below production v{cur.version} "
                    f"({old_m}); pass --force to promote anyway"
                )
    c.set_registered_model_alias(name, alias, version)


def _val_metric(c: Any, run_id: str) -> float | None:
    v = c.get_run(run_id).data.metrics.get(VAL_METRIC)
    return None if v is None else float(v)


def resolve_model_uri(uri: str) -> Path:
    """A local checkpoint path, or ``models:/<name>@<alias>`` / ``models:/<name>/<version>``
    downloaded from the registry; returns the local checkpoint file."""
    if not uri.startswith("models:/"):
        p = Path(uri)
        if not p.exists():
            raise TrainingError(f"{uri}: no such checkpoint")
        return p
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    ckpt = local / "model.pt" if local.is_dir() else local
    if not ckpt.exists():
        raise TrainingError(f"{uri}: the registered artifact holds no model.pt")
    return ckpt
