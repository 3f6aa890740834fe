"""Concurrent, batched ensemble scoring gives the same probabilities as scoring each window alone,
member by member (the path before the cloud's batching), on real audio."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from shared_features import DEFAULT, LabelSpace, frame_windows, load_audio
from shared_features.package import PACKAGE_FORMAT, PACKAGE_VERSION, load_package, sha256_file

onnx = pytest.importorskip("onnx")
birdnet = pytest.importorskip("shared_features.birdnet")

SOUNDSCAPE = "train_soundscapes/H02_20230420_074000.ogg"


def _conv_member(path, n_classes: int, seed: int) -> None:
    """A small untrained CNN in ONNX (conv → ReLU → global pool → dense → sigmoid) over the
    package's log-mel ``[batch, 128, frames]``: batch-dependent kernels, like the real members."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.2).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b")
    d = numpy_helper.from_array((rng.standard_normal((8, n_classes)) * 0.5).astype(np.float32), "d")
    nodes = [
        helper.make_node("Unsqueeze", ["features", "axes"], ["x"]),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "d"], ["l"]),
        helper.make_node("Sigmoid", ["l"], ["probs"]),
    ]
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        nodes,
        "member",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 128, "frames"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_classes])],
        [w, b, d, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """Two CNN members, the BirdNET head (random weights) and BirdNET zero-shot over the 206
    species: untrained, for scoring identity only."""
    root = tmp_path_factory.mktemp("ensemble")
    (root / "members").mkdir()
    labels = LabelSpace.default()
    members = []
    for k in range(2):
        f = root / "members" / f"cnn{k}.onnx"
        _conv_member(f, len(labels), seed=k)
        members.append({"name": f"cnn{k}", "runtime": "onnx", "file": f"members/cnn{k}.onnx"})
    rng = np.random.default_rng(7)
    head = birdnet.EmbeddingHead(
        labels,
        (rng.standard_normal((1024, len(labels))) * 0.05).astype(np.float32),
        np.zeros(len(labels), np.float32),
        np.zeros(1024, np.float32),
        np.ones(1024, np.float32),
    )
    head.save(root / "members" / "head.npz")
    members.append({"name": "birdnet_head", "runtime": "birdnet-head", "file": "members/head.npz"})
    known = birdnet.BirdNET(labels, embeddings=False).known
    members.append(
        {"name": "birdnet", "runtime": "birdnet", "known": [c for c, k in zip(labels.codes, known) if k]}
    )
    for m, w in zip(members, (0.3, 0.2, 0.3, 0.2)):
        m.update(feature_preset="default", feature_fingerprint=DEFAULT.fingerprint(), weight=w)
        if "file" in m:
            m.update(sha256=sha256_file(root / m["file"]), bytes=(root / m["file"]).stat().st_size)
    manifest = {
        "format": PACKAGE_FORMAT,
        "package_version": PACKAGE_VERSION,
        "kind": "ensemble",
        "name": "scoring-test",
        "version": "1",
        "feature_preset": "default",
        "labels": labels.to_dict(),
        "labels_sha256": labels.digest(),
        "members": members,
    }
    (root / "package.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def windows(mini):
    wins, _ = frame_windows(load_audio(mini / SOUNDSCAPE)[: 6 * DEFAULT.window_samples])
    return wins


def test_concurrent_batched_scores_equal_per_window_scores(ensemble, windows):
    seq = load_package(ensemble, threads=1)
    assert not seq.concurrent
    one = [seq.predict(w[None]) for w in windows]  # the old path: one window, one member at a time
    conc = load_package(ensemble, threads=2)
    assert conc.concurrent
    try:
        for batch in (16, 4):  # windows split into feature-member batches and BirdNET chunk shares
            s = conc.predict(windows, batch=batch)
            np.testing.assert_allclose(s.probs, np.concatenate([o.probs for o in one]), atol=1e-5, rtol=0)
            for name, p in s.members.items():
                np.testing.assert_allclose(
                    p, np.concatenate([o.members[name] for o in one]), atol=1e-5, rtol=0
                )
        single = conc.predict(windows[:1])  # one window: its three BirdNET chunks over two interpreters
        np.testing.assert_allclose(single.probs, one[0].probs, atol=1e-5, rtol=0)
    finally:
        conc.close()
    assert s.probs.max() > 0 and s.members["birdnet"].max() > 0  # the scores are not trivially zero


def test_concurrent_callers_get_their_own_scores(ensemble, windows):
    pkg = load_package(ensemble, threads=2)
    want = [pkg.predict(windows[i : i + 2]).probs for i in (0, 2, 4)]
    got: dict[int, np.ndarray] = {}

    def call(k: int) -> None:
        got[k] = pkg.predict(windows[2 * k : 2 * k + 2]).probs

    threads = [threading.Thread(target=call, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pkg.close()
    for k in range(3):
        np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0)


def test_embedding_output_equals_the_kept_intermediate_tensor(windows):
    """BirdNET's model patched to output its embedding gives the same logits and embeddings as
    the unpatched model that keeps every intermediate tensor."""
    model, _ = birdnet.locate()
    content = birdnet._with_embedding_output(model)
    assert content is not None
    Interp = birdnet.interpreter_class()
    chunks = np.concatenate([birdnet.BirdNET.chunks_of(w) for w in windows[:2]])
    patched = birdnet._Runner(Interp, model, content, 1, True)
    kept = birdnet._Runner(Interp, model, None, 1, True)
    (la, ea), (lb, eb) = patched(chunks), kept(chunks)
    assert ea is not None and eb is not None and ea.shape == (len(chunks), 1024)
    np.testing.assert_allclose(la, lb, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ea, eb, atol=1e-6, rtol=0)


def test_members_of_weight_zero_are_not_run_for_the_combined_scores(ensemble, windows, tmp_path):
    """``predict(members=False)`` (the cloud's Scorer) skips a member whose weight is 0 — it adds
    nothing to the combination — and its probabilities are bit-identical to the full path's."""
    import shutil

    root = tmp_path / "pkg"
    shutil.copytree(ensemble, root)
    manifest = json.loads((root / "package.json").read_text())
    for m in manifest["members"]:
        if m["name"] in ("cnn1", "birdnet"):
            m["weight"] = 0.0
    (root / "package.json").write_text(json.dumps(manifest))
    for threads in (1, 2):
        full = load_package(root, threads=threads)
        lean = load_package(root, threads=threads)
        try:
            want = full.predict(windows[:3])
            got = lean.predict(windows[:3], members=False)
        finally:
            full.close()
            lean.close()
        assert set(want.members) == {"cnn0", "cnn1", "birdnet_head", "birdnet"}
        assert set(got.members) == {"cnn0", "birdnet_head"}
        assert "cnn1" not in lean._runners and "cnn1" in full._runners  # never loaded, never run
        np.testing.assert_array_equal(got.probs, want.probs)
        assert got.probs.max() > 0


def test_birdnet_interpreters_keep_their_chunk_counts(windows):
    """One window's three chunks go 2 + 1 to two interpreters; each is picked again for the count
    it is sized for (a resize re-allocates its tensors), and the scores are those of one
    interpreter without a pool."""
    from concurrent.futures import ThreadPoolExecutor

    labels = LabelSpace.default()
    bn = birdnet.BirdNET(labels, embeddings=True, interpreters=2)
    ref = birdnet.BirdNET(labels, embeddings=True, interpreters=1)
    with ThreadPoolExecutor(2) as pool:
        outs = [bn.predict_windows(windows[k % 2][None], pool=pool) for k in range(6)]
    assert sorted(r.batch for r in bn._idle) == [1, 2]
    assert sum(r.resizes for r in bn._idle) == 2  # each sized once, not flipped on every call
    for k, o in enumerate(outs):
        want = ref.predict_windows(windows[k % 2][None])
        np.testing.assert_allclose(o.probs, want.probs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(o.embeddings, want.embeddings, atol=1e-5, rtol=0)
