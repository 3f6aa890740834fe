"""The pipeline layer: one data selection for local and Ray runs, a run that fails is recorded as
failed, each step's resolved configuration beside its outputs and in MLflow, reuse of a finished
step, the gate (promotion, refusal, aliases) and the edge release that the real updater installs."""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from shared_features import LabelSpace
from tests.conftest import tiny_edge_package
from training.data import AudioWindows, CachedWindows, DataSource
from training.errors import TrainingError
from training.gate import (
    EdgeModel,
    FeedbackClip,
    FeedbackSet,
    GateRule,
    ModelFigures,
    RefusalKind,
    decide,
    heldout_from_dataset,
)
from training.loop import TrainConfig, select_training_data
from training.models import member_config
from training.pipeline import Tracking, gate, make_release, train_member
from training.ray_train import ray_config, worker_data
from training.release import ReleaseError, read_release
from training.tracking import tracked_run

from .conftest import TINY


def _mlflow_client(monkeypatch):
    from mlflow import MlflowClient

    from training.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return MlflowClient(tracking_uri())


def _examples(data) -> tuple[list, np.ndarray, list, np.ndarray]:
    def ids(ds):
        if isinstance(ds, CachedWindows):
            return list(ds.rows)
        assert isinstance(ds, AudioWindows)
        return [(r.filename, w) for r, w in ds.items]

    return ids(data.train), data.train.target_matrix(), ids(data.val), data.val.target_matrix()


# ------------------------------------------------------------------------- data selection
@pytest.mark.parametrize("kind", ["cache", "audio"])
def test_local_and_ray_select_identical_examples(kind, synth_cache, synth_dir):
    """The same TrainConfig → the same windows and targets, locally and in every Ray worker (the
    worker rebuilds everything from the JSON config it is sent). Non-default secondary weight and
    SNR floor, so a path that drops them cannot pass."""
    source = DataSource(cache=synth_cache) if kind == "cache" else DataSource(data_dir=synth_dir)
    mcfg = member_config("resnet50", **TINY["resnet50"])
    tcfg = TrainConfig(seed=3, secondary_weight=0.25, min_snr_db=15.0)
    local = select_training_data(source, mcfg, tcfg, soundscapes=False)
    ray_side = worker_data(json.loads(json.dumps(ray_config(mcfg, tcfg, source))))
    a, b = _examples(local), _examples(ray_side)
    assert a[0] == b[0] and a[2] == b[2]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[3], b[3])
    # the settings really act: the floor dropped training windows, validation kept all
    everything = select_training_data(source, mcfg, replace(tcfg, min_snr_db=None), soundscapes=False)
    assert 0 < len(local.train) < len(everything.train) and len(local.val) == len(everything.val)
    assert np.isclose(local.train.target_matrix(), 0.25).any()  # secondary labels at their weight


def test_cache_and_audio_apply_one_snr_rule(synth_cache, synth_dir):
    mcfg = member_config("resnet50", **TINY["resnet50"])
    tcfg = TrainConfig(min_snr_db=15.0)
    c = select_training_data(DataSource(cache=synth_cache), mcfg, tcfg, soundscapes=False)
    a = select_training_data(DataSource(data_dir=synth_dir), mcfg, tcfg, soundscapes=False)
    assert isinstance(c.train, CachedWindows) and isinstance(a.train, AudioWindows)
    from_cache = sorted(
        (c.train.cache.index[i]["recording"], round(float(c.train.cache.index[i]["start"])))
        for i in c.train.rows
    )
    step = a.feature_cfg.window_stride_seconds
    from_audio = sorted((r.filename, round(w * step)) for r, w in a.train.items)
    assert from_cache == from_audio


def test_data_source_is_validated(synth_cache):
    with pytest.raises(TrainingError, match="exactly one"):
        DataSource()
    with pytest.raises(TrainingError, match="subset"):
        DataSource(cache=synth_cache, subset="later")


# ----------------------------------------------------------------------------- runs
def test_one_context_manager_owns_run_status(monkeypatch):
    c = _mlflow_client(monkeypatch)
    with tracked_run("t-status", "ok") as ok:
        ok.log_metrics({"x": 1.0})
    with pytest.raises(ValueError), tracked_run("t-status", "bad") as bad:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), tracked_run("t-status", "stopped") as stopped:
        raise KeyboardInterrupt
    status = {r: c.get_run(t.run_id).info.status for r, t in (("ok", ok), ("bad", bad), ("stopped", stopped))}
    assert status == {"ok": "FINISHED", "bad": "FAILED", "stopped": "KILLED"}


def test_failed_step_ends_failed_and_leaves_no_result(tmp_path, synth_cache, monkeypatch):
    c = _mlflow_client(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="differ from the requested"):  # PANNs member, default cache
        train_member(
            DataSource(cache=synth_cache),
            member_config("cnn14_sed", **TINY["cnn14_sed"], feature_preset="panns"),
            TrainConfig(epochs=1),
            out,
            tracking=Tracking(experiment="t-fail"),
        )
    runs = c.search_runs([c.get_experiment_by_name("t-fail").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.params["step.step"] == "train_member"  # the config was recorded first
    assert (out / "step.json").exists() and not (out / "result.json").exists()


@pytest.mark.slow
def test_step_records_config_and_reuses_only_the_same_config(tmp_path, synth_cache, monkeypatch):
    c = _mlflow_client(monkeypatch)
    source = DataSource(cache=synth_cache)
    mcfg = member_config("resnet50", **TINY["resnet50"])
    out = tmp_path / "m"
    kw = {"tracking": Tracking(experiment="t-reuse"), "progress": False, "reuse": True}
    first = train_member(source, mcfg, TrainConfig(epochs=1, batch_size=16), out, **kw)
    rec = json.loads((out / "step.json").read_text())
    assert rec["step"] == "train_member" and rec["config"]["train"]["batch_size"] == 16
    assert rec["config"]["source"]["cache"] == str(synth_cache.resolve())
    run = c.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["step.config.train.epochs"] == "1"
    assert {"step.json", "result.json", "model"} <= {a.path for a in c.list_artifacts(first.run_id)}
    assert first.registered is not None and first.registered.name == "silencio-resnet50"
    mtime = first.checkpoint.stat().st_mtime_ns
    again = train_member(source, mcfg, TrainConfig(epochs=1, batch_size=16), out, **kw)
    assert again == first and first.checkpoint.stat().st_mtime_ns == mtime  # not trained again
    other = train_member(source, mcfg, TrainConfig(epochs=1, batch_size=8), out, **kw)
    assert other.run_id != first.run_id
    assert json.loads((out / "step.json").read_text())["config"]["train"]["batch_size"] == 8


# ----------------------------------------------------------------------------- gate
def _figures(auc: float, repeated: int, flagged: int = 4) -> ModelFigures:
    return ModelFigures(auc, flagged, repeated, 0, 2, 2)


def test_gate_rule():
    prod = _figures(0.900, 3)
    assert decide(_figures(0.896, 1), prod) == ()  # drop 0.004 ≤ 0.005, fewer repeated errors
    assert decide(_figures(0.95, 0), None) == ()  # nothing in production yet
    kinds = [r.kind for r in decide(_figures(0.890, 1), prod)]
    assert kinds == [RefusalKind.HELDOUT_DROP]
    assert [r.kind for r in decide(_figures(0.95, 3), prod)] == [RefusalKind.NO_IMPROVEMENT]
    assert [r.kind for r in decide(_figures(0.95, 0, flagged=0), _figures(0.9, 0, 0))] == [
        RefusalKind.NO_FLAGGED_CLIPS
    ]
    assert decide(_figures(0.95, 3), prod, GateRule(require_fewer_flagged_errors=False)) == ()


@pytest.fixture()
def gate_setup(tmp_path, synth_dir, monkeypatch):
    """An edge package registered in MLflow as v1 (production) and the same package as v2
    (candidate); feedback clips of the synthetic dataset, each flagged as a wrong species."""
    from training.tracking import MLflowTracker, set_alias

    client = _mlflow_client(monkeypatch)
    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    pkg = tiny_edge_package(tmp_path / "pkg", labels, version="1")
    versions = []
    for _ in range(2):
        tr = MLflowTracker("t-edge", system_metrics=False)
        tr.log_artifact(pkg, "edge/onnx-fp32")
        versions.append(tr.register("silencio-edge", "edge/onnx-fp32", alias="candidate"))
        tr.end()
    set_alias("silencio-edge", versions[0], "production", force=True)
    clips = []
    for i, rec in enumerate(sorted((synth_dir / "train_audio").rglob("*.ogg"))[:3]):
        x, sr = sf.read(rec, dtype="float32")
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, x[: 5 * sr], sr)
        clips.append(
            FeedbackClip(
                path, reported=labels.codes[0], verdict="wrong_species", correct_code=rec.parent.name
            )
        )
    clips.append(FeedbackClip(clips[0].path, reported=clips[0].correct_code or "", verdict="confirmed"))
    return {
        "client": client,
        "labels": labels,
        "pkg": pkg,
        "versions": versions,
        "heldout": heldout_from_dataset(synth_dir),
        "feedback": FeedbackSet("3 flagged + 1 confirmed synthetic clips", tuple(clips)),
    }


def test_gate_promotes_fewer_flagged_errors_and_moves_the_alias(tmp_path, gate_setup):
    g = gate_setup
    wrong = g["labels"].codes[0]
    production = EdgeModel(g["pkg"], {wrong: 0.0})  # reports the flagged species on every clip
    candidate = EdgeModel(g["pkg"], {wrong: 1.0})  # a threshold fitted to the verdicts: never
    from training.pipeline import Registered

    d = gate(
        candidate,
        production,
        g["heldout"],
        g["feedback"],
        tmp_path / "gate",
        registry=Registered("silencio-edge", g["versions"][1]),
        tracking=Tracking(experiment="t-gate"),
    )
    assert d.promoted and d.refusals == ()
    assert (
        d.production is not None and d.production.flagged_repeated == 3 and d.candidate.flagged_repeated == 0
    )
    assert d.candidate.heldout_macro_roc_auc == d.production.heldout_macro_roc_auc
    assert (
        str(g["client"].get_model_version_by_alias("silencio-edge", "production").version) == g["versions"][1]
    )
    assert g["client"].get_run(d.run_id).data.tags["decision"] == "promoted"
    assert json.loads((tmp_path / "gate" / "gate.json").read_text())["promoted"] is True
    rel = make_release(g["pkg"], tmp_path / "releases", thresholds=candidate.thresholds, decision=d)
    assert read_release(rel.directory)["gate"]["promoted"] is True


def test_gate_refuses_a_worse_candidate_aliases_unchanged_no_release(tmp_path, gate_setup):
    g = gate_setup
    wrong = g["labels"].codes[0]
    poisoned = EdgeModel(g["pkg"], {wrong: 0.0})  # e.g. fitted to poisoned verdicts
    from training.pipeline import Registered

    d = gate(
        poisoned,
        EdgeModel(g["pkg"], {wrong: 0.0}),
        g["heldout"],
        g["feedback"],
        tmp_path / "gate",
        registry=Registered("silencio-edge", g["versions"][1]),
        tracking=Tracking(experiment="t-gate"),
    )
    assert not d.promoted and [r.kind for r in d.refusals] == [RefusalKind.NO_IMPROVEMENT]
    assert "3 of 3" in d.reason and d.alias_moved is None
    assert (
        str(g["client"].get_model_version_by_alias("silencio-edge", "production").version) == g["versions"][0]
    )
    with pytest.raises(ReleaseError, match="not released"):
        make_release(g["pkg"], tmp_path / "releases", decision=d)
    assert not (tmp_path / "releases").exists()


# ----------------------------------------------------------------------------- release
def test_release_is_verified_and_installs_through_the_edge_updater(tmp_path, synth_dir):
    import hashlib

    from edge.store import EdgeStore
    from edge.updater import install
    from shared_features.signature import ReleaseStatement

    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    pkg = tiny_edge_package(tmp_path / "pkg", labels, version="7")
    code = labels.codes[2]
    rel = make_release(pkg, tmp_path / "rel", thresholds={code: 0.8}, tracking=Tracking(track=False))
    man = read_release(rel.directory)
    assert man["labels_sha256"] == labels.digest() and man["default_threshold"] == 0.5
    assert (
        set(man["files"]) >= {"thresholds.json", "package/package.json"}
        and "release.json" not in man["files"]
    )
    assert json.loads((rel.directory / "thresholds.json").read_text()) == {code: 0.8}
    assert rel.sha256 == hashlib.sha256(rel.archive.read_bytes()).hexdigest()
    with tarfile.open(rel.archive) as tar:
        assert {"release.json", "thresholds.json", "package/package.json"} <= set(tar.getnames())
    # what the cloud signs when it publishes this release (docs/contracts.md §11); install checks
    # the archive and its content against it
    statement = ReleaseStatement(
        name=man["name"],
        version=man["version"],
        sha256=rel.sha256,
        bytes=rel.archive.stat().st_size,
        feature_fingerprint=man["feature_fingerprint"],
        labels_sha256=man["labels_sha256"],
        thresholds_sha256=hashlib.sha256((rel.directory / "thresholds.json").read_bytes()).hexdigest(),
        signed_at="2026-01-01T00:00:00Z",
        key_id="0" * 16,
    )
    store = EdgeStore(tmp_path / "edge.db")
    got = install(store, rel.archive, statement, tmp_path / "models", None)
    assert got["version"] == "7" and store.active_model().version == "7"
    assert json.loads((Path(got["path"]) / "thresholds.json").read_text()) == {code: 0.8}
    # tampering is caught; unknown species are refused
    (rel.directory / "thresholds.json").write_text(json.dumps({code: 0.1}))
    with pytest.raises(ReleaseError, match="thresholds.json"):
        read_release(rel.directory)
    with pytest.raises(ReleaseError, match="label space"):
        make_release(pkg, tmp_path / "rel2", thresholds={"nosuch": 0.5}, tracking=Tracking(track=False))


def test_feedback_clip_verdicts_are_checked(tmp_path):
    with pytest.raises(TrainingError, match="verdict"):
        FeedbackClip(Path(tmp_path / "x.wav"), "a", "maybe")


@pytest.mark.slow
def test_export_publishes_fp32_when_int8_is_refused(tmp_path, synth_dir):
    import torch

    from training.export import PublishThresholds
    from training.models import build_model, save_checkpoint
    from training.pipeline import export_edge_packages

    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    torch.manual_seed(0)
    m = build_model(member_config("student", **TINY["student"]), len(labels)).eval()
    ckpt = save_checkpoint(tmp_path / "student.pt", m, labels, metrics={"best_val_roc_auc": 0.5})
    res = export_edge_packages(
        ckpt,
        synth_dir,
        tmp_path / "edge",
        thresholds=PublishThresholds(min_top1_agreement=1.01),  # int8 can never pass
        tracking=Tracking(track=False),
        version="3",
    )
    assert set(res.packages) == {"onnx-fp32"} and "onnx-int8" in res.refused
    assert res.chosen == tmp_path / "edge" / "onnx-fp32" and not (tmp_path / "edge" / "onnx-int8").exists()
    assert "top-1 agreement" in res.refused["onnx-int8"] and res.version == "3"
    with pytest.raises(TrainingError, match="worse than the thresholds"):  # required: nothing published
        export_edge_packages(
            ckpt,
            synth_dir,
            tmp_path / "edge2",
            required=("onnx-fp32", "onnx-int8"),
            thresholds=PublishThresholds(min_top1_agreement=1.01),
            tracking=Tracking(track=False),
        )
    assert not (tmp_path / "edge2" / "onnx-fp32").exists()
