"""ONNX models: compiled needle (`needle.onnx.load`, native executor) against onnxruntime.

    python benchmarks/bench_onnx.py [--only resnet50,squeezenet,vgg19,transformer]
                                    [--batches 1,8] [--repeats N] [--threads 2]

Models: ResNet-50, SqueezeNet and VGG-19 of the onnx package (`onnx/backend/test/data/light`)
at each batch (needle gets it through `input_shapes`), and a Transformer encoder exported
from PyTorch with `torch.onnx.export` (its row is skipped, with a message, without torch).
The light models' weights are `ConstantOfShape` fills, which needle's importer exploits (a
conv of a uniform weight computes one output channel); so that both runtimes do a real
model's work, every fill becomes a seeded random initializer of its shape first.

onnxruntime: CPU, `intra_op_num_threads=threads`, `ORT_ENABLE_ALL`. needle:
`NEEDLE_NUM_THREADS` = `OPENBLAS_NUM_THREADS` = threads, set before needle is imported.
Both take turns (`timed`: warm-up, rounds of calls, medians), float32, the same input.
`ratio` = needle's throughput / onnxruntime's (median ms of ort / median ms of needle);
`compile s` = needle's import + compile + first call, with an empty kernel cache. Progress to stderr, table to stdout.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_workloads import timed  # noqa: E402  (the same turn-about timing as the workloads)

LIGHT = ("resnet50", "squeezenet", "vgg19")
#: the Transformer encoder: (layers, d_model, heads, feed-forward, batch, sequence)
ENCODER = (4, 256, 4, 1024, 8, 64)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def openblas_core() -> str:
    """The kernel family of the OpenBLAS needle calls (scipy-openblas32): the machine's
    `OPENBLAS_CORETYPE`, or what it detects."""
    try:
        import ctypes

        import scipy_openblas32 as blas
        lib = ctypes.CDLL(os.path.join(blas.get_lib_dir(), f"lib{blas.get_library()}.so"))
        lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
        return lib.scipy_openblas_get_corename().decode()
    except (ImportError, OSError, AttributeError):
        return "unknown"


def light_model(name: str, batch: int):
    """(model with random weights and a dynamic batch, {input: shape}) of a light model (a
    Reshape to (1, features) becomes one to (-1, features))."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")
    model = onnx.load(path)
    graph = model.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    fills = {n.output[0]: tuple(int(d) for d in arrays[n.input[0]])
             for n in graph.node if n.op_type == "ConstantOfShape"}
    weights = {**{k: v.shape for k, v in arrays.items() if v.dtype == np.float32}, **fills}
    nodes = [n for n in graph.node if n.op_type != "ConstantOfShape"]
    rng = np.random.default_rng(0)
    for key, shape in weights.items():
        if len(shape) == 1:  # biases and BN parameters (variances must stay positive)
            arrays[key] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
        else:
            arrays[key] = rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2 / np.prod(shape[1:])))
    for node in nodes:  # a Reshape to (1, features) saved at batch 1 keeps the batch
        if node.op_type == "Reshape" and arrays[node.input[1]][0] == 1:
            arrays[node.input[1]] = np.concatenate([[-1], arrays[node.input[1]][1:]]).astype(np.int64)
    used = {i for n in nodes for i in n.input}
    inputs = [v for v in graph.input if v.name in used and v.name not in arrays]
    inits = [numpy_helper.from_array(arrays[k], k) for k in sorted(used & set(arrays))]
    for field, values in ((graph.node, nodes), (graph.input, inputs), (graph.initializer, inits)):
        del field[:]
        field.extend(values)
    model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs
    (data,) = graph.input
    data.type.tensor_type.shape.dim[0].dim_param = "N"
    del graph.value_info[:]
    for out in graph.output:
        out.type.tensor_type.shape.dim[0].dim_param = "N"
    dims = [d.dim_value for d in data.type.tensor_type.shape.dim]
    return model, {data.name: (batch,) + tuple(dims[1:])}


def encoder_model():
    """(Transformer encoder exported by torch.onnx.export, {input: shape}), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    import onnx

    layers, d, heads, ff, batch, seq = ENCODER
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
    x = torch.randn(batch, seq, d)
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder-layer op has no ONNX export
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(enc, (x,), buf, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue()), {"x": (batch, seq, d)}


def bench(label: str, model, shapes: dict, args) -> tuple:
    """One table row: (label, needle ms, onnxruntime ms, ratio, compile s)."""
    import numpy as np
    import onnxruntime as ort

    import needle.onnx

    rng = np.random.default_rng(1)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    log(f"[{label}] needle: importing and compiling")
    t = time.perf_counter()
    nd = needle.onnx.load(model, input_shapes=shapes)
    got = nd(**feeds)
    compile_s = time.perf_counter() - t
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)[0]
    err = float(np.abs(got.numpy() - want).max() / (np.abs(want).max() + 1e-30))
    log(f"[{label}] compile {compile_s:.1f} s, executor {nd.forward.stats['executor']}, max rel. diff {err:.1e}")
    if err > 1e-3:
        raise AssertionError(f"{label}: needle and onnxruntime disagree ({err:.1e})")
    ms = {name: median for name, (median, _) in timed(
        {"needle": lambda: nd(**feeds).numpy(), "onnxruntime": lambda: sess.run(None, feeds)},
        args.repeats, warmup=1, rounds=min(5, args.repeats)).items()}
    row = (label, ms["needle"], ms["onnxruntime"], ms["onnxruntime"] / ms["needle"], compile_s)
    log(f"[{label}] needle {row[1]:.1f} ms, onnxruntime {row[2]:.1f} ms, ratio {row[3]:.2f}")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(LIGHT + ("transformer",)))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    for var in ("NEEDLE_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ["NEEDLE_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_onnx_cache_")  # cold compiles
    load_before = os.getloadavg()
    rows = []
    for name in args.only.split(","):
        if name == "transformer":
            made = encoder_model()
            if made is None:
                log("[transformer] skipped: torch is not installed (pip install torch)")
                continue
            layers, d, heads, ff, batch, seq = ENCODER
            rows.append(bench(f"Transformer encoder ({layers}x d{d} h{heads} ff{ff}), batch {batch} x {seq}",
                              *made, args))
            continue
        for b in (int(x) for x in args.batches.split(",")):
            rows.append(bench(f"{name} batch {b}", *light_model(name, b), args))
    print(f"threads {args.threads}, needle's OpenBLAS kernels {openblas_core()}, median of {args.repeats} calls; "
          f"load average (1, 5, 15 min) before "
          f"{'/'.join(f'{v:.1f}' for v in load_before)}, after {'/'.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| model | needle ms | onnxruntime ms | needle/ort throughput | needle compile s |")
    print("|---|---:|---:|---:|---:|")
    for label, nms, oms, ratio, cs in rows:
        print(f"| {label} | {nms:.1f} | {oms:.1f} | {ratio:.2f}x | {cs:.1f} |")


if __name__ == "__main__":
    main()
