"""MLflow logging of runs, from event hooks: ``pip install 'mtbert[mlflow]'``, then ``MTBERT_MLFLOW=1``.

Turned on by the environment, not the recipe: where a run is *recorded* is a property of the
machine (a tracking server here, none on a laptop), like ``train.device``, and a recipe must
train the same everywhere. The switch:

``MTBERT_MLFLOW`` unset, empty or ``0``
    the plugin does nothing (it never imports mlflow).
``MTBERT_MLFLOW=1``
    log to MLflow's own tracking URI (``MLFLOW_TRACKING_URI``, else MLflow's default).
``MTBERT_MLFLOW=<tracking URI>``
    log there: ``file:./mlruns`` (MLflow's local file store; MLflow >= 3 also wants
    ``MLFLOW_ALLOW_FILE_STORE=true`` for it), ``sqlite:///mlflow.db``, ``http://host:5000``.

The experiment is ``MLFLOW_EXPERIMENT_NAME`` (MLflow's variable), else the recipe's name; the
MLflow run is named after the run folder. What is logged:

* at the start: the resolved recipe as params, keyed by path (``optim.lr``,
  ``gradient_transforms.0.name``: MLflow keys take no brackets), ``recipe.toml`` as an
  artifact, tags ``mtbert.folder``, ``mtbert.recipe_source``, ``mtbert.version``;
* after every evaluation: every dev metric as ``dev/<metric>`` at the optimizer step, and
  ``examples_seen`` (the step axis that compares one-task and all-tasks sampling);
* at the end: the best evaluation's metrics as ``best/<metric>``, ``metrics.json``,
  ``metrics.jsonl``, ``run.json`` and ``predictions/`` as artifacts; the MLflow run ends
  FINISHED.

``--resume`` continues the same MLflow run (its id is kept in the run folder's
``mlflow.json``). A run that fails or is interrupted leaves its MLflow run RUNNING (no hook is
called then) until it is resumed. Under torchrun only rank 0 calls event hooks, so one MLflow
run is logged per job. Any MLflow error becomes one warning; logging never stops training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mtbert.api import hookimpl

ENV = "MTBERT_MLFLOW"
PARAMS_PER_CALL = 100  # MLflow's log_batch limit for params
METRICS_PER_CALL = 1000  # and for metrics


def tracking_uri_setting() -> str | None:
    """``None`` when off; ``""`` for MLflow's own default URI; otherwise the URI to log to."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in ("", "0", "false", "no", "off"):
        return None
    return "" if value.lower() in ("1", "true", "yes", "on") else value


def param_key(path: str) -> str:
    """A recipe key path as an MLflow param key: ``regularizers[0].name`` -> ``regularizers.0.name``."""
    return path.replace("[", ".").replace("]", "")


def recipe_params(recipe: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Every value of a resolved recipe as text, keyed by path (lists of tables indexed)."""
    out: dict[str, str] = {}
    if isinstance(recipe, dict):
        for key, value in recipe.items():
            out.update(recipe_params(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(recipe, list) and recipe and all(isinstance(v, dict) for v in recipe):
        for i, value in enumerate(recipe):
            out.update(recipe_params(value, f"{prefix}.{i}"))
    elif isinstance(recipe, (list, bool)) or recipe is None:
        out[param_key(prefix)] = json.dumps(recipe)
    else:
        out[param_key(prefix)] = str(recipe)
    return out


class Session:
    """One mtbert run's MLflow run: the client, its id, and the run folder."""

    def __init__(self, client: Any, run_id: str, folder: Path):
        self.client = client
        self.run_id = run_id
        self.folder = folder

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        for i in range(0, len(metrics), METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + METRICS_PER_CALL])

    def log_params(self, values: dict[str, str]) -> None:
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in values.items()]
        for i in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i:i + PARAMS_PER_CALL])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder or path.name)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), folder)


_SESSIONS: dict[int, Session] = {}


def _warn(run: Any, what: str, exc: BaseException) -> None:
    warn = getattr(run, "warn", None)
    if warn is not None:
        warn(f"logger-mlflow: {what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _open(run: Any, uri: str) -> Session:
    """Start the MLflow run of ``run`` (or reopen it on ``--resume``); records its id in mlflow.json."""
    from importlib.metadata import PackageNotFoundError, version

    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        mtbert_version = version("mtbert")
    except PackageNotFoundError:
        mtbert_version = "unknown"

    client = MlflowClient(tracking_uri=uri or None)
    folder = Path(run.folder)
    saved = folder / "mlflow.json"
    if getattr(run, "resume_state", None) is not None and saved.is_file():
        record = json.loads(saved.read_text(encoding="utf-8"))
        client = MlflowClient(tracking_uri=record["tracking_uri"])
        client.update_run(record["run_id"], status="RUNNING")
        return Session(client, record["run_id"], folder)
    experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or run.recipe.name
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(experiment_name)
    created = client.create_run(experiment_id, run_name=folder.name, tags={
        "mtbert.folder": str(folder.resolve()), "mtbert.recipe_source": str(run.recipe.source or ""),
        "mtbert.version": mtbert_version,
    })
    session = Session(client, created.info.run_id, folder)
    tracking_uri = uri or mlflow.get_tracking_uri()
    saved.write_text(json.dumps({"tracking_uri": tracking_uri, "experiment_id": experiment_id,
                                 "run_id": session.run_id}, indent=2) + "\n", encoding="utf-8")
    session.log_params(recipe_params(run.recipe.to_dict()))
    session.log_artifact(folder / "recipe.toml")
    return session


@hookimpl
def mtbert_on_run_start(run: Any) -> None:
    uri = tracking_uri_setting()
    if uri is None:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        warn = getattr(run, "warn", None)
        if warn is not None:
            warn(f"logger-mlflow: {ENV} is set but mlflow is not installed (pip install 'mtbert[mlflow]'); "
                 "this run is not logged to MLflow")
        return
    try:
        _SESSIONS[id(run)] = _open(run, uri)
    except Exception as exc:  # noqa: BLE001 - logging must never stop training
        _warn(run, "could not start the MLflow run", exc)


@hookimpl
def mtbert_on_evaluate(run: Any, step: int, metrics: dict[str, float]) -> None:
    session = _SESSIONS.get(id(run))
    if session is None:
        return
    try:
        values = {f"dev/{key}": value for key, value in metrics.items()}
        values["examples_seen"] = float(getattr(run, "examples_seen", 0))
        session.log_metrics(values, step)
    except Exception as exc:  # noqa: BLE001
        _warn(run, "evaluation not logged", exc)


@hookimpl
def mtbert_on_run_end(run: Any, summary: dict[str, Any]) -> None:
    session = _SESSIONS.pop(id(run), None)
    if session is None:
        return
    try:
        best = (summary.get("best") or {})
        if best.get("dev"):
            session.log_metrics({f"best/{k}": v for k, v in best["dev"].items()}, int(best.get("step", 0)))
        for name in ("metrics.json", "metrics.jsonl", "run.json", "predictions"):
            session.log_artifact(session.folder / name)
        session.client.set_terminated(session.run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001
        _warn(run, "end of run not logged", exc)
