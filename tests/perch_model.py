"""A tiny Perch-shaped TFLite model, written at test time with LiteRT's flatbuffer schema (no model
file lives in the repository): 5 s at 32 kHz in, a ReLU embedding ``[1, dim]`` and ``[1, k]`` logits
out — two FULLY_CONNECTED layers with seeded random weights — plus its class list."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("amekes", "cattyr", "not_a_birdclef_code")


def write_tiny_perch(folder: Path, dim: int = 16, n_in: int = 160_000, seed: int = 0) -> tuple[Path, Path]:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    arrays = [
        (rng.standard_normal((dim, n_in)) / np.sqrt(n_in)).astype(np.float32),
        np.zeros(dim, np.float32),
        rng.standard_normal((k, dim)).astype(np.float32),
        np.zeros(k, np.float32),
    ]

    def tensor(name: str, shape: tuple[int, ...], buf: int) -> s.TensorT:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buf
        return t

    def fully_connected(inputs: list[int], output: int, act: int) -> s.OperatorT:
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, inputs, [output]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = s.FullyConnectedOptionsT()
        op.builtinOptions.fusedActivationFunction = act
        return op

    sg = s.SubGraphT()
    sg.tensors = [
        tensor("audio", (1, n_in), 0),
        tensor("w1", arrays[0].shape, 1),
        tensor("b1", arrays[1].shape, 2),
        tensor("embedding", (1, dim), 0),
        tensor("w2", arrays[2].shape, 3),
        tensor("b2", arrays[3].shape, 4),
        tensor("logits", (1, k), 0),
    ]
    sg.inputs, sg.outputs = [0], [3, 6]
    sg.operators = [
        fully_connected([0, 1, 2], 3, s.ActivationFunctionType.RELU),
        fully_connected([3, 4, 5], 6, s.ActivationFunctionType.NONE),
    ]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [sg]
    model.buffers = [s.BufferT()]
    for a in arrays:
        b = s.BufferT()
        b.data = np.frombuffer(a.tobytes(), np.uint8)
        model.buffers.append(b)
    fb = flatbuffers.Builder(0)
    fb.Finish(model.Pack(fb), file_identifier=b"TFL3")
    folder.mkdir(parents=True, exist_ok=True)
    path, classes = folder / "tiny_perch.tflite", folder / "tiny_perch_classes.txt"
    path.write_bytes(fb.Output())
    classes.write_text("\n".join(CLASSES) + "\n")
    return path, classes
