from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from shared_features import DEFAULT, LabelSpace, features_from_audio, load_audio
from shared_features.package import FingerprintMismatchError, PackageError, load_package
from training.export import ExportError, PublishThresholds, export_edge, export_onnx
from training.models import build_model, load_checkpoint, member_config, save_checkpoint

from .conftest import TINY


@pytest.mark.parametrize("member", ["resnet50", "cnn14_sed"])
def test_onnx_export_carries_contracts_and_matches_torch(tmp_path, mini, member):
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    model = build_model(member_config(member, **TINY[member]), len(labels)).eval()
    ckpt = save_checkpoint(
        tmp_path / "m.pt", model, labels, run_id="run123", metrics={"best_val_roc_auc": 0.9}
    )
    feats, _ = features_from_audio(load_audio(mini / "train_soundscapes" / "H02_20230420_074000.ogg"))
    path = tmp_path / "m.onnx"
    info = export_onnx(ckpt, path, feats[:4])
    assert info["parity"]["max_abs_diff_vs_torch"] <= 1e-4 and info["labels"] == labels
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["feature_fingerprint"] == DEFAULT.fingerprint()
    assert LabelSpace.from_json(meta["labels"]) == labels and meta["run_id"] == "run123"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"features": feats})[0]  # any batch size
    m2, _, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        ref = torch.sigmoid(m2(torch.from_numpy(feats))).numpy()
    assert probs.shape == (12, 206) and np.abs(probs - ref).max() <= 1e-4


def test_parity_failure_refuses_export(tmp_path, mini):
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    ckpt = save_checkpoint(
        tmp_path / "m.pt", build_model(member_config("resnet50", **TINY["resnet50"]), 206), labels
    )
    with pytest.raises(ExportError, match="disagree"):
        export_onnx(ckpt, tmp_path / "m.onnx", tolerance=0.0 - 1.0)
    assert not (tmp_path / "m.onnx").exists()


def _real_windows(mini):
    """Features of real windows: the mini soundscape and a few focal clips."""
    from training.dataset import BirdCLEFDataset

    ds = BirdCLEFDataset.load(mini)
    feats, ys = [], []
    for rec in ds.recordings[:10]:
        f, _ = features_from_audio(load_audio(ds.audio_path(rec)))
        feats.append(f)
        ys.append(np.repeat(ds.labels.encode(rec.primary_label)[None], len(f), 0))
    return np.concatenate(feats), np.concatenate(ys)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, mini):
    tmp = tmp_path_factory.mktemp("edge")
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    torch.manual_seed(0)
    model = build_model(member_config("resnet50", **TINY["resnet50"]), len(labels)).eval()
    return save_checkpoint(tmp / "m.pt", model, labels, run_id="r1", metrics={"best_val_roc_auc": 0.5})


def test_edge_packages_fp32_and_int8_load_verify_and_score(tmp_path, mini, tiny_ckpt):
    feats, ys = _real_windows(mini)
    mans = export_edge(
        tiny_ckpt,
        tmp_path / "edge",
        parity=feats[:4],
        calibration=feats[::2],
        check=feats[1::2],
        check_targets=ys[1::2],
        thresholds=PublishThresholds(min_top1_agreement=0.0, max_roc_auc_drop=1.0),
        version="7",
    )
    assert set(mans) == {"onnx-fp32", "onnx-int8"}
    v = mans["onnx-int8"]["validation"]["vs_fp32"]
    assert 0.0 <= v["top1_agreement"] <= 1.0 and "roc_auc_drop" in v and v["windows"] == len(feats[1::2])
    fp32 = load_package(tmp_path / "edge" / "onnx-fp32")
    int8 = load_package(tmp_path / "edge" / "onnx-int8")
    assert fp32.kind == "edge" and fp32.version == "7" and int8.members[0].quantization == "int8"
    assert int8.members[0].bytes < fp32.members[0].bytes
    m, _, _ = load_checkpoint(tiny_ckpt)
    with torch.no_grad():
        ref = torch.sigmoid(m(torch.from_numpy(feats[:6]))).numpy()
    assert np.abs(fp32.predict_features(feats[:6]) - ref).max() <= 1e-4
    # the waveform path of the package computes the same features itself
    wave = load_audio(mini / "train_soundscapes" / "H02_20230420_074000.ogg")[: 2 * DEFAULT.window_samples]
    w = wave.reshape(2, -1)
    s = fp32.predict(w)
    f2, _ = features_from_audio(wave)
    assert np.abs(s.probs - fp32.predict_features(f2[:2])).max() <= 1e-5


def test_int8_below_thresholds_is_not_published(tmp_path, mini, tiny_ckpt):
    feats, ys = _real_windows(mini)
    with pytest.raises(ExportError, match="not published"):
        export_edge(
            tiny_ckpt,
            tmp_path / "edge",
            parity=feats[:2],
            calibration=feats[:8],
            check=feats[8:20],
            check_targets=ys[8:20],
            thresholds=PublishThresholds(min_top1_agreement=1.01),
        )
    assert not (tmp_path / "edge" / "onnx-int8").exists() and not (tmp_path / "edge" / "onnx-fp32").exists()


def test_package_loader_refuses_corrupt_foreign_and_mismatched(tmp_path, mini, tiny_ckpt):
    feats, ys = _real_windows(mini)
    export_edge(
        tiny_ckpt,
        tmp_path / "edge",
        parity=feats[:2],
        calibration=feats[:4],
        check=feats[4:8],
        check_targets=None,
        formats=("onnx-fp32",),
    )
    src = tmp_path / "edge" / "onnx-fp32"

    def variant(name, edit):
        d = tmp_path / name
        shutil.copytree(src, d)
        edit(d)
        return d

    def flip_byte(d):
        f = next((d / "members").iterdir())
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        f.write_bytes(bytes(b))

    def rewrite(key, value, member=False):
        def edit(d):
            m = json.loads((d / "package.json").read_text())
            (m["members"][0] if member else m)[key] = value
            (d / "package.json").write_text(json.dumps(m))

        return edit

    with pytest.raises(PackageError, match="sha256"):
        load_package(variant("corrupt", flip_byte))
    with pytest.raises(PackageError, match="version"):
        load_package(variant("old", rewrite("package_version", 1)))
    with pytest.raises(FingerprintMismatchError, match="fv1-0000"):
        load_package(variant("feat", rewrite("feature_fingerprint", "fv1-0000000000000000", member=True)))
    with pytest.raises(PackageError, match="no package.json"):
        load_package(tmp_path / "edge")
    with pytest.raises(PackageError, match="samples"):
        load_package(src).predict(np.zeros((1, 1000), np.float32))


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory, mini):
    labels = LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    torch.manual_seed(0)
    model = build_model(member_config("student", **TINY["student"]), len(labels)).eval()
    tmp = tmp_path_factory.mktemp("student")
    ckpt = save_checkpoint(tmp / "s.pt", model, labels)
    feats, ys = _real_windows(mini)
    fp32 = tmp / "s.onnx"
    export_onnx(ckpt, fp32, feats[:2])
    return ckpt, fp32, feats, ys


def _float_weights(path) -> dict[str, bool]:
    """Conv/Gemm node name → whether its weight is a float initializer (not fed by a DequantizeLinear)."""
    m = onnx.load(str(path))
    floats = {i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return {n.name: n.input[1] in floats for n in m.graph.node if n.op_type in ("Conv", "Gemm")}


def test_int8_recipe_keeps_the_named_parts_in_float(tmp_path, tiny_student):
    from training.export import Int8Recipe, float_nodes, quantize_int8

    _, fp32, feats, _ = tiny_student
    graph = onnx.load(str(fp32))
    se = float_nodes(graph, ("se",))
    head = float_nodes(graph, ("head",))
    first = float_nodes(graph, ("first",))
    assert se and all("/se/" in n for n in se)
    assert any(n.endswith("classifier/Gemm") for n in head) and any("conv_head" in n for n in head)
    assert first == [next(n.name for n in graph.graph.node if n.op_type == "Conv")]
    all_int8 = _float_weights(quantize_int8(fp32, tmp_path / "a.onnx", feats[:8], Int8Recipe()))
    assert not any(all_int8.values())  # every convolution and the classifier quantised
    mixed_path = quantize_int8(fp32, tmp_path / "b.onnx", feats[:8], Int8Recipe(keep_float=("se", "head")))
    mixed = _float_weights(mixed_path)
    kept = {n for n, is_float in mixed.items() if is_float}
    assert kept == {n for n in mixed if n in se or n in head}
    assert (tmp_path / "a.onnx").stat().st_size < mixed_path.stat().st_size < fp32.stat().st_size
    # the mixed graph still carries the contracts and scores like fp32 within int8 rounding
    meta = {p.key for p in onnx.load(str(mixed_path)).metadata_props}
    assert {"feature_fingerprint", "labels"} <= meta
    sess = ort.InferenceSession(str(mixed_path), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    got, want = (s.run(None, {"features": feats[:4]})[0] for s in (sess, ref))
    assert got.shape == want.shape and np.abs(got - want).max() < 0.2


def test_int8_recipe_is_validated_and_recorded_in_the_package(tmp_path, tiny_student, capsys):
    from training.export import DEFAULT_INT8, Int8Recipe

    with pytest.raises(ExportError, match="unknown parts"):
        Int8Recipe(keep_float=("stem",))
    with pytest.raises(ExportError, match="calibration"):
        Int8Recipe(calibration="mean")
    ckpt, _, feats, ys = tiny_student
    recipe = Int8Recipe(keep_float=("first",), calibration="percentile", percentile=99.99)
    mans = export_edge(
        ckpt,
        tmp_path / "edge",
        parity=feats[:2],
        calibration=feats[:8],
        check=feats[8:20],
        check_targets=ys[8:20],
        thresholds=PublishThresholds(min_top1_agreement=0.0, max_roc_auc_drop=1.0),
        int8=recipe,
    )
    # ONNX Runtime's percentile calibrator prints its progress: kept off the user's output
    assert "histogram" not in capsys.readouterr().out
    got = mans["onnx-int8"]["validation"]["int8_recipe"]
    assert got == {
        "keep_float": ["first"],
        "per_channel": True,
        "calibration": "percentile",
        "percentile": 99.99,
        "qat_epochs": 0,
    }
    assert "qat" not in mans["onnx-int8"]["validation"]
    assert "int8_recipe" not in mans["onnx-fp32"]["validation"]
    assert isinstance(DEFAULT_INT8, Int8Recipe)


def test_qat_rounding_matches_the_export_and_spares_the_float_parts(tiny_student):
    """The simulated int8 is the export's: per-channel symmetric weights (so rounding commutes with
    the per-channel BatchNorm fold), and nothing simulated in the parts the recipe keeps float."""
    from training.qat import _float_module_names, _fq_weight, _Simulator

    w = torch.randn(8, 4, 3, 3)
    fold = torch.rand(8, 1, 1, 1) + 0.1
    assert torch.allclose(_fq_weight(w * fold, True), _fq_weight(w, True) * fold, atol=1e-6)
    q = _fq_weight(w, True)
    steps = q.flatten(1) / (w.abs().flatten(1).amax(1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-3) and len(torch.unique(q[0])) <= 255
    ckpt, _, _, _ = tiny_student
    model, _, _ = load_checkpoint(ckpt)
    keep = _float_module_names(model.backbone, ("se", "head"))
    assert any(".se." in n for n in keep) and {"conv_head", "classifier"} <= keep
    sim = _Simulator(model.backbone, keep, per_channel=True)
    names = {id(m): n for n, m in model.backbone.named_modules()}
    simulated = {names[id(m)] for m in sim.weights}
    assert "conv_stem" in simulated and not simulated & keep
    assert any(n.endswith("conv_pwl") for n in simulated)
    sim.remove()


def test_int8_with_qat_fine_tunes_and_is_checked_against_the_original_fp32(tmp_path, tiny_student):
    """``qat_epochs``: the int8 is quantised from fine-tuned weights (its file differs from the
    post-training int8's), recorded in the package, and compared with the original fp32 export."""
    from training.export import DEFAULT_INT8, Int8Recipe
    from training.qat import qat_finetune

    with pytest.raises(ExportError, match="qat_epochs"):
        Int8Recipe(qat_epochs=-1)
    ckpt, _, feats, ys = tiny_student
    rec = qat_finetune(ckpt, tmp_path / "q.pt", feats[:16], feats[:16], epochs=1, lr=1e-3)
    assert rec["max_abs_weight_change"] > 0 and rec["epochs"] == 1 and len(rec["loss"]) == 1
    assert 0 <= rec["simulated_top1_agreement"]["before"] <= 1
    tuned, _, blob = load_checkpoint(tmp_path / "q.pt")
    orig, _, _ = load_checkpoint(ckpt)
    assert blob["qat"]["epochs"] == 1
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), orig.state_dict().values()))
    common = dict(
        parity=feats[:2],
        calibration=feats[:16],
        check=feats[16:40],
        check_targets=ys[16:40],
        thresholds=PublishThresholds(min_top1_agreement=0.0, max_roc_auc_drop=1.0),
    )
    ptq = export_edge(ckpt, tmp_path / "ptq", **common, int8=DEFAULT_INT8)
    qat = export_edge(
        ckpt, tmp_path / "qat", **common, int8=Int8Recipe(**{**DEFAULT_INT8.__dict__, "qat_epochs": 1})
    )
    v = qat["onnx-int8"]["validation"]
    assert v["int8_recipe"]["qat_epochs"] == 1 and v["qat"]["epochs"] == 1 and v["qat"]["windows"] == 16
    assert 0.0 <= v["vs_fp32"]["top1_agreement"] <= 1.0 and "roc_auc_drop" in v["vs_fp32"]
    assert qat["onnx-int8"]["members"][0]["sha256"] != ptq["onnx-int8"]["members"][0]["sha256"]
    # the reference is the original model: the fp32 package is the same export in both
    assert v["vs_fp32"]["roc_auc_fp32"] == ptq["onnx-int8"]["validation"]["vs_fp32"]["roc_auc_fp32"]
    assert not list((tmp_path / "qat").rglob("*.qat.*"))  # the fine-tuned copy is not left behind


def test_export_cli_passes_the_qat_epochs_to_the_export_step(tmp_path, monkeypatch):
    """``silencio export edge --int8-qat-epochs N``: the export step gets the default recipe with
    N epochs of QAT (0, post-training only, without the flag)."""
    import training.pipeline
    from silencio.cli import main
    from training.export import DEFAULT_INT8

    seen = []

    def step(*_args, **kwargs):
        seen.append(kwargs["int8"])
        raise ExportError("stopped after the arguments")

    monkeypatch.setattr(training.pipeline, "export_edge_packages", step)
    for extra in (["--int8-qat-epochs", "3"], []):
        assert (
            main(["export", "edge", str(tmp_path / "m.pt"), "--data", str(tmp_path), "--no-mlflow", *extra])
            != 0
        )
    assert seen[0].qat_epochs == 3 and seen[0].keep_float == DEFAULT_INT8.keep_float
    assert seen[1] == DEFAULT_INT8


def test_calibration_and_check_sets_decode_only_the_windows_they_use(synth_dir):
    """At BirdCLEF scale a split's audio does not fit in memory: the export's calibration decodes
    only its picked training windows, and its check set is a seeded sample of validation windows
    (features only) equal to the log-mel of exactly those windows."""
    from shared_features import log_mel
    from training.bundle import waveforms
    from training.data import from_audio
    from training.export import calibration_windows, check_features

    data = from_audio(synth_dir, DEFAULT, seed=0, soundscapes=False)

    class Counting:
        """A window set that records which windows were decoded."""

        def __init__(self, ds):
            self.ds, self.read = ds, []

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            self.read.append(i)
            return self.ds[i]

        def target_matrix(self):
            return self.ds.target_matrix()

    train = Counting(data.train)
    assert len(train) > 8
    calib = calibration_windows(synth_dir, train, seed=3, n=8)
    assert len(train.read) == 8 and len(set(train.read)) == 8  # the picked windows, nothing else
    assert np.array_equal(calib[:8], waveforms(data.train, train.read))
    assert calib.shape[1] == DEFAULT.window_samples

    val = Counting(data.val)
    n = len(val) // 2
    feats, targets = check_features(val, n, seed=3, batch=4)
    again, _ = check_features(data.val, n, seed=3)
    picked = sorted(set(val.read))
    assert len(val.read) == n == len(picked) and len(feats) == n  # seeded sample, each decoded once
    assert np.array_equal(feats, again)  # the same sample for the same seed
    assert np.allclose(feats, log_mel(waveforms(data.val, picked), DEFAULT), atol=1e-5)
    assert np.array_equal(targets, np.asarray(data.val.target_matrix(), np.float32)[picked])
    every, _ = check_features(data.val, len(data.val) + 5)  # fewer windows than n: all of them
    assert len(every) == len(data.val)


def test_edge_int8_benchmark_prints_a_qat_row(tmp_path, synth_dir):
    """``benchmarks/edge_int8.py --qat-epochs 1`` on a tiny student: the QAT row and its note are
    printed beside the post-training row (a recipe name holding a comma is accepted)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    labels = LabelSpace.from_taxonomy_csv(synth_dir / "taxonomy.csv")
    torch.manual_seed(0)
    model = build_model(member_config("student", **TINY["student"]), len(labels)).eval()
    ckpt = save_checkpoint(tmp_path / "s.pt", model, labels)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "edge_int8.py"), str(ckpt), "--data", str(synth_dir),
         "--recipes", "SE+head float, percentile 99.99", "--qat-epochs", "1", "--repeat", "2"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| int8: SE+head float, percentile 99.99 " in out
    assert "| int8: SE+head float, percentile 99.99 + QAT 1 epoch " in out
    assert "fine-tuned 1 epochs on" in out and "simulated int8 top-1 agreement" in out
