"""ResNet-50's conv shapes one at a time: needle's conv step against onnxruntime's conv kernel.

    NEEDLE_PROFILE=1 python benchmarks/bench_onnx_convs.py [--batch 1] [--only "3x3,7x7"] [--threads 2]

Each of the 15 conv shapes of ResNet-50 as a one-conv ONNX model (Conv with bias, then Relu,
between NHWC transposes, which needle's layout pass cancels, so its conv reads NHWC as inside
the whole model). Times only the conv: needle's conv step from its per-step profile
(`NEEDLE_PROFILE=1`, required), onnxruntime's conv kernel from its own profiler (the
`FusedConv` / `Conv` node). Each runtime runs in its own blocks of calls after 0.3 s of
untimed ones: calls alternating one by one slow needle by up to 2x (onnxruntime's worker
threads keep spinning on the cores after each run). Weights stay in cache between calls, as
they do not in the whole model at batch 1. The last column weights each shape's gap by how
often the model has it. Table to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: (label, input size, in channels, out channels, kernel, stride, how many in ResNet-50)
SHAPES = [("7x7/2 stem", 224, 3, 64, 7, 2, 1), ("1x1 64->64 at 56", 56, 64, 64, 1, 1, 1),
          ("3x3 64 at 56", 56, 64, 64, 3, 1, 3), ("1x1 64->256 at 56", 56, 64, 256, 1, 1, 4),
          ("1x1 256->64 at 56", 56, 256, 64, 1, 1, 2), ("1x1 256->128 at 56", 56, 256, 128, 1, 1, 1),
          ("3x3 128 at 28", 28, 128, 128, 3, 1, 4), ("1x1 128->512 at 28", 28, 128, 512, 1, 1, 5),
          ("1x1 512->128 at 28", 28, 512, 128, 1, 1, 3), ("3x3 256 at 14", 14, 256, 256, 3, 1, 6),
          ("1x1 256->1024 at 14", 14, 256, 1024, 1, 1, 7), ("1x1 1024->256 at 14", 14, 1024, 256, 1, 1, 5),
          ("3x3 512 at 7", 7, 512, 512, 3, 1, 3), ("1x1 512->2048 at 7", 7, 512, 2048, 1, 1, 4),
          ("1x1 2048->512 at 7", 7, 2048, 512, 1, 1, 2)]
SETTLE_S = 0.3
CONV_OPS = ("FusedConv", "Conv", "NchwcConv")


def conv_model(batch: int, size: int, cin: int, cout: int, k: int, stride: int, rng):
    """A one-conv ONNX model with NHWC input and output (random weight and bias)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    out = (size + 2 * (k // 2) - k) // stride + 1
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w", "b"], ["c"], kernel_shape=[k, k], pads=[k // 2] * 4,
                              strides=[stride, stride]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, size, size, cin])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out, out, cout])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, 2 * batch * out * out * cin * cout * k * k


def block(call, calls: int) -> None:
    """Untimed calls for SETTLE_S, then `calls` more."""
    start = time.perf_counter()
    while time.perf_counter() - start < SETTLE_S:
        call()
    for _ in range(calls):
        call()


def needle_conv_us(nd, call, calls: int) -> float:
    """µs per call of needle's conv steps over `calls` calls after settling."""
    runner = next(iter(nd.forward._cache.values())).runner
    seconds = lambda: sum(p.seconds for p in runner.profile if "Conv" in p.label)  # noqa: E731
    block(call, 0)
    before = seconds()
    for _ in range(calls):
        call()
    return (seconds() - before) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--only", default="", help="comma-separated parts of shape labels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args()
    if os.environ.get("NEEDLE_PROFILE", "") in ("", "0"):
        raise SystemExit("set NEEDLE_PROFILE=1: needle's conv step time comes from its per-step profile")
    for var in ("NEEDLE_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import onnxruntime as ort

    import needle.onnx

    rng = np.random.default_rng(0)
    scratch = tempfile.mkdtemp(prefix="bench_onnx_convs_")
    print(f"batch {args.batch}, {args.threads} threads, {args.calls} calls x 3 blocks each, medians\n")
    print("| conv (count in the model) | needle µs | GFLOP/s | onnxruntime µs | GFLOP/s | ort/needle | gap x count µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    totals = [0.0, 0.0]
    for label, size, cin, cout, k, stride, count in SHAPES:
        if args.only and not any(part in label for part in args.only.split(",")):
            continue
        model, flops = conv_model(args.batch, size, cin, cout, k, stride, rng)
        nd = needle.onnx.load(model)
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(scratch, "ort_profile")   # read, then removed
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        x = rng.standard_normal((args.batch, size, size, cin)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(nd(x=x).numpy(), want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))
        ort_call = lambda: sess.run(None, {"x": x})  # noqa: E731
        needle_call = lambda: nd(x=x)  # noqa: E731
        needle_us = []
        for _ in range(3):
            block(ort_call, args.calls)
            needle_us.append(needle_conv_us(nd, needle_call, args.calls))
        profile = sess.end_profiling()
        with open(profile) as f:
            events = json.load(f)
        os.remove(profile)
        ort_us = statistics.median(e["dur"] for e in events if e.get("cat") == "Node"
                                   and e["name"].endswith("_kernel_time")
                                   and e.get("args", {}).get("op_name") in CONV_OPS)
        mine = statistics.median(needle_us)
        totals[0] += mine * count
        totals[1] += ort_us * count
        print(f"| {label} ({count}) | {mine:.0f} | {flops / mine / 1e3:.0f} | {ort_us:.0f} | {flops / ort_us / 1e3:.0f} | "
              f"{ort_us / mine:.2f} | {(mine - ort_us) * count:+.0f} |", flush=True)
    os.rmdir(scratch)
    print(f"\nall convs, weighted: needle {totals[0] / 1e3:.1f} ms, onnxruntime {totals[1] / 1e3:.1f} ms, "
          f"ort/needle {totals[1] / totals[0]:.2f}")


if __name__ == "__main__":
    main()
