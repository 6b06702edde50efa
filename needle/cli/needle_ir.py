"""needle-ir: run a script and print the IR of every graph it compiled.

    needle-ir [--after PASS | --all] [--function NAME] [--format text|dot|c|llvm|cuda]
              [--target cpu|cuda] [--out DIR] [--why-not-fused] [--list-passes] SCRIPT.py [ARGS...]

Runs SCRIPT.py to completion as ``python SCRIPT.py ARGS`` would (its directory first on
``sys.path``, ``__name__ == "__main__"``), with the script's own stdout sent to stderr.
An ONNX file (``needle-ir model.onnx``) is imported with ``needle.onnx.load`` and called
once on zeros of its declared input shapes instead.
Then prints to stdout, for every distinct graph compiled during the run (each compiled
function and signature once, in compile order), a header line

    # needle-ir: <qualname> <signature> after <pass>

followed by the IR after that pass (``print_graph``: each node keeps the user's
``file:line``), or Graphviz DOT with ``--format dot``. ``--format c`` / ``--format llvm``
show the generated code instead: the graph's fusion plan (``plan_fusion``), and for each
group in plan order either a line ``# kernel k<id> [<kind>] nodes %a %b ...`` followed by
the kernel's readable C or its (unoptimised) LLVM IR module, or, for a group that runs on
the interpreter (views, opaque ops, non-float32 values, lowering errors; GEMM/conv under
``NEEDLE_EXECUTOR=kernels``), one line ``# k<id> [<kind>] runs on the interpreter: <reason>``;
a GEMM/conv group on the native executor (the default) gets ``# k<id> [extern] runs
natively: ...``. ``--why-not-fused`` prints
the fusion plan (one line per group) and the refused merges (``why-not ...`` lines)
instead of the IR. The default pass is the last one that ran; ``--after input`` shows the
graph as traced (with its ``grad`` requests); ``--all`` prints every stage in order. ``--function NAME`` keeps the functions whose
``__qualname__`` or its last dotted component is NAME. ``--list-passes`` prints the stage
names ``--after`` takes (``input`` first, then the pipeline's passes: ``needle.passes.pipeline``)
and exits.

``--target cuda`` (or ``--format cuda``) lowers every graph the script compiled for CUDA,
whatever device the script's tensors are on (no GPU is needed): the final graph's fusion
plan, schedule and a memory plan with the GPU's 256-byte alignment (the cuda pipeline's
analyses, ``needle.passes.pipeline.plan_kernels``) become one complete
translation unit (``needle.codegen.cuda``): every kernel as ``extern "C" __global__`` CUDA
C and the host entry ``needle_graph_<name>(void** inputs, void** outputs, char* arena,
cudaStream_t stream)`` launching them in schedule order, which ``nvcc -c`` accepts as is.
It is printed after each graph's header line, or with ``--out DIR`` written to
``DIR/<qualname>.cu`` (the qualname with characters other than letters, digits, ``_``,
``.`` and ``-`` replaced by ``_``; ``-<k>`` added for the k-th signature when a function
compiled several), one line ``# needle-ir: wrote PATH (N kernel launches)`` printed per
file. A graph that cannot be emitted is reported on stderr (exit code 1). ``--target cuda``
combines with ``--function`` but not with ``--after``/``--all`` (it always uses the
final graph).

The text and DOT outputs parse back: the header lines are ``#`` comments, which
``needle.ir.parse_graphs`` and Graphviz both skip.

Exit codes: 0 success; 1 no graph was compiled (or the script raised); the script's own
exit code when it exits non-zero (the graphs compiled so far are printed first); 2 usage
errors (an unknown ``--after`` name lists the valid ones).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import sys
import traceback
from typing import Optional

from needle.codegen import LoweringError, compile_kernel
from needle.codegen.cuda import CudaCodegenError, build_program
from needle.compile import compiled_functions, executor_kind
from needle.ir.dot import to_dot
from needle.ir.printer import print_graph
from needle.passes.fusion import format_plan, format_why_not, plan_fusion
from needle.passes import pipeline

HEADER = "# needle-ir:"

# options that take a value (everything else before the script is a flag)
_VALUE_OPTIONS = ("--after", "--function", "--format", "--target", "--out")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="needle-ir",
        usage="needle-ir [--after PASS | --all] [--function NAME] "
              "[--format text|dot|c|llvm|cuda] [--target cpu|cuda] [--out DIR] [--why-not-fused] "
              "[--list-passes] SCRIPT.py [ARGS...]",
        description="Run a script and print the graph IR of every function it compiled with "
                    "@needle.compile (the script's own stdout goes to stderr).")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--after", metavar="PASS",
                       help="show the IR after this pass ('input': as traced; default: the last "
                            "pass that ran); names as --list-passes prints")
    group.add_argument("--all", action="store_true", help="show every stage, each with its header")
    p.add_argument("--function", metavar="NAME",
                   help="only functions whose __qualname__ or its last component is NAME")
    p.add_argument("--format", choices=("text", "dot", "c", "llvm", "cuda"), default=None,
                   help="text IR (default), Graphviz DOT, the generated kernels of the "
                        "graph's fusion groups as readable C or LLVM IR, or the graph's CUDA "
                        "translation unit (implies --target cuda)")
    p.add_argument("--target", choices=("cpu", "cuda"), default=None,
                   help="cuda: lower every compiled graph for CUDA (no GPU needed) and print "
                        "its translation unit (--format cuda)")
    p.add_argument("--out", metavar="DIR",
                   help="with --target cuda: write DIR/<qualname>.cu per compiled graph instead "
                        "of printing them")
    p.add_argument("--why-not-fused", action="store_true",
                   help="print the graph's fusion plan and every refused merge with its reason "
                        "instead of the IR")
    p.add_argument("--list-passes", action="store_true",
                   help="print the stage names --after takes, one per line, and exit")
    return p


def _split_argv(argv: list) -> tuple:
    """(needle-ir's own options, the script or None, the script's arguments).

    Everything from the first non-option token (or the token after ``--``) on belongs to
    the script, so its arguments may look like needle-ir's options."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        if a in _VALUE_OPTIONS:
            i += 1
        i += 1
    own = [a for a in argv[:i] if a != "--"]
    if i >= len(argv):
        return own, None, []
    return own, argv[i], list(argv[i + 1:])


def pass_names() -> list:
    """The stage names `--after` takes: 'input', then the pipeline's passes."""
    return list(pipeline.STAGES)  # read at each call: the declaration is the one source


def _qualname(cf) -> str:
    fn = getattr(cf, "fn", None)
    return (getattr(cf, "__qualname__", None) or getattr(fn, "__qualname__", None)
            or getattr(cf, "__name__", None) or type(cf).__name__)


def _matches(cf, name: Optional[str]) -> bool:
    if name is None:
        return True
    qualname = _qualname(cf)
    return name in (qualname, qualname.rsplit(".", 1)[-1])


def _snapshot() -> dict:
    """id(compiled function) -> (graphs it had compiled, calls it had answered)."""
    return {id(cf): (cf.compiled, _calls(cf)) for cf in compiled_functions()}


def _calls(cf) -> int:
    return cf.stats["calls"]


def _new_graphs(before: dict) -> list:
    """(qualname, signature text, {stage: Graph}) for each signature compiled since `before`."""
    return [(cf, signature, stages) for cf in compiled_functions()
            for signature, stages in cf.entries(since=before.get(id(cf), (0, 0))[0])]


def _called(before: dict) -> bool:
    """Whether a compiled function was called since `before`."""
    return any(_calls(cf) > before.get(id(cf), (0, 0))[1] for cf in compiled_functions())


def _run_onnx(path: str) -> None:
    """Import an ONNX model and call it once on zeros of its input shapes."""
    import numpy as np
    import needle.onnx  # lazy: onnx is an optional extra

    model = needle.onnx.load(path)
    model(*(np.zeros(model.function.input_shapes[k], np.float32) for k in model.input_names))


def _run_script(script: str, args: list) -> int:
    """Run the script as `python SCRIPT ARGS` would; its stdout goes to stderr. Returns its
    exit code (0 when it ran to completion)."""
    path = os.path.abspath(script)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(path))
    code = 0
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if path.endswith(".onnx"):
                _run_onnx(path)
            else:
                runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        if e.code is None or e.code == 0:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:  # sys.exit("message"): Python prints it and exits 1
            print(e.code, file=sys.stderr)
            code = 1
        if code:
            print(f"needle-ir: {script} exited with code {code}", file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc(file=sys.stderr)
        code = 130
    except BaseException:  # noqa: BLE001  (report any failure of the user's script)
        traceback.print_exc(file=sys.stderr)
        print(f"needle-ir: {script} raised an exception (exit code 1)", file=sys.stderr)
        code = 1
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        sys.stdout.flush()
    return code


def _stage_to_show(stages: dict, after: Optional[str], order: list) -> tuple:
    """(stage name, graph) to print for one signature; `after=None` is the last pass that
    ran. A valid pass that did not run for this graph falls back to the last stage before it
    (so the header says what is really shown)."""
    ran = [s for s in stages if s != "final"]
    if after is None:
        name = ran[-1] if ran else "final"
        return name, stages[name]
    if after in stages:
        return after, stages[after]
    position = order.index(after) if after in order else len(order)
    earlier = [s for s in ran if s in order and order.index(s) < position]
    name = earlier[-1] if earlier else ran[0] if ran else "final"
    return name, stages[name]


def _extern(group, graph) -> str:
    op = graph.node(group.anchor).op if group.anchor is not None else "GEMM/conv"
    extra = len(group.node_ids) - 1
    return f"extern {op}" + (f" with {extra} epilogue op{'s' * (extra != 1)}" if extra else "")


def _native_step(group, graph) -> Optional[str]:
    """What the native executor (the default on the nd backend) runs for an extern group,
    or None under another executor."""
    if group.kind != "extern" or executor_kind() != "native":
        return None
    gemm = ("BLAS sgemm or needle's small_gemm" if graph.node(group.anchor).op == "MatMul"
            else "im2col + GEMM")
    return f"{_extern(group, graph)} as a native {gemm} step (epilogue fused per block of rows)"


def _not_generated(group, graph, subgraph) -> Optional[str]:
    """Why the kernel executor runs `group` on the interpreter, or None when it becomes an
    LLVM kernel (elementwise/reduce groups of float32 values; lowering may still refuse)."""
    if group.kind == "extern":
        return _extern(group, graph)
    if group.kind == "view":
        return "view-only group (no work to generate)"
    if group.kind not in ("elementwise", "reduce"):
        ops = sorted({n.op for n in subgraph.nodes if n.op != "input"})
        return f"{group.kind} op {'/'.join(ops)} (no kernel lowering)"
    dtypes = set()
    for n in subgraph.nodes:
        for t in (n.type if isinstance(n.type, tuple) else (n.type,)):
            dtypes.add(t.dtype)
    if dtypes - {"float32"}:
        return f"non-float32 values ({', '.join(sorted(dtypes - {'float32'}))}); kernels are float32 only"
    return None


def _render_kernels(graph, fmt: str) -> str:
    """Every fusion group of `graph` in plan order: a kernel header and its C / LLVM IR, or
    one comment line saying why it runs on the interpreter."""
    out = []
    for group in plan_fusion(graph).groups:
        native = _native_step(group, graph)
        if native is not None:
            out.append(f"# k{group.id} [{group.kind}] runs natively: {native}\n")
            continue
        sub = group.subgraph(graph)
        reason = _not_generated(group, graph, sub)
        kernel = None
        if reason is None:
            try:
                kernel = compile_kernel(sub)
            except LoweringError as e:
                reason = f"lowering error: {e}"
        if kernel is None:
            out.append(f"# k{group.id} [{group.kind}] runs on the interpreter: {reason}\n")
            continue
        nodes = " ".join(f"%{n}" for n in group.node_ids)
        out.append(f"# kernel k{group.id} [{group.kind}] nodes {nodes}\n")
        code = kernel.c_source if fmt == "c" else kernel.llvm_ir
        out.append(code if code.endswith("\n") else code + "\n")
    return "".join(out)


def _file_stem(qualname: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in qualname) or "graph"


def _cuda_outputs(shown, out_dir: Optional[str]) -> tuple:
    """(text for stdout, exit code) of --target cuda: each graph's translation unit, printed
    or written to out_dir."""
    per_function: dict = {}
    for cf, _, _ in shown:
        per_function[id(cf)] = per_function.get(id(cf), 0) + 1
    seen: dict = {}
    out, code = [], 0
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    for cf, signature, stages in shown:
        qualname = _qualname(cf)
        k = seen.get(id(cf), 0)
        seen[id(cf)] = k + 1
        graph = stages.get("final") or list(stages.values())[-1]
        try:
            program = build_program(graph, pipeline.plan_kernels(graph, "cuda"))
            source = program.source()
        except CudaCodegenError as e:
            print(f"needle-ir: cannot emit CUDA for {qualname} {signature}: {e}", file=sys.stderr)
            code = 1
            continue
        if out_dir is None:
            out.append(f"{HEADER} {qualname} {signature} target cuda\n")
            out.append(source)
            continue
        stem = _file_stem(qualname) + (f"-{k}" if per_function[id(cf)] > 1 else "")
        path = os.path.join(out_dir, stem + ".cu")
        with open(path, "w") as f:
            f.write(source)
        out.append(f"{HEADER} wrote {path} ({len(program.launches)} kernel launches)\n")
    return "".join(out), code


def _render_why_not(graph) -> str:
    plan = plan_fusion(graph)
    return format_plan(plan, graph) + format_why_not(plan, graph)


def _render(graph, fmt: str, why_not: bool = False) -> str:
    if why_not:
        return _render_why_not(graph)
    if fmt in ("c", "llvm"):
        return _render_kernels(graph, fmt)
    if fmt == "dot":
        return to_dot(graph)
    return print_graph(graph)


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, script, script_args = _split_argv(argv)
    parser = _parser()
    try:
        opts = parser.parse_args(own)
    except SystemExit as e:  # argparse already printed the usage message
        return int(e.code or 0)

    if opts.list_passes:
        print("\n".join(pass_names()))
        return 0
    if script is None:
        parser.print_usage(sys.stderr)
        print("needle-ir: error: SCRIPT.py is required (or --list-passes)", file=sys.stderr)
        return 2
    cuda = opts.target == "cuda" or opts.format == "cuda"
    if opts.target == "cpu" and opts.format == "cuda":
        print("needle-ir: error: --format cuda is the cuda target's output; it does not combine with "
              "--target cpu", file=sys.stderr)
        return 2
    if cuda and opts.format not in (None, "cuda"):
        print(f"needle-ir: error: --target cuda prints CUDA C; it does not combine with --format {opts.format}",
              file=sys.stderr)
        return 2
    if cuda and (opts.after is not None or opts.all or opts.why_not_fused):
        print("needle-ir: error: --target cuda lowers the final graph; it does not combine with "
              "--after, --all or --why-not-fused", file=sys.stderr)
        return 2
    if opts.out is not None and not cuda:
        print("needle-ir: error: --out writes CUDA translation units: use it with --target cuda",
              file=sys.stderr)
        return 2
    opts.format = opts.format or ("cuda" if cuda else "text")
    valid = pass_names()
    if opts.after is not None and opts.after not in valid + ["final"]:
        print(f"needle-ir: error: unknown pass {opts.after!r} for --after; valid names: "
              f"{', '.join(valid)} (and 'final')", file=sys.stderr)
        return 2
    if opts.why_not_fused and opts.format != "text":
        print(f"needle-ir: error: --why-not-fused prints the fusion log as text; it does not "
              f"combine with --format {opts.format}", file=sys.stderr)
        return 2
    if not os.path.isfile(script):
        print(f"needle-ir: error: no such script: {script}", file=sys.stderr)
        return 2

    before = _snapshot()
    code = _run_script(script, script_args)
    graphs = _new_graphs(before)
    if not graphs:
        why = ("its compiled functions were called but compiled no graph (a trace or pass raised: see "
               "the error above)" if _called(before) else "no @needle.compile function was called")
        print(f"needle-ir: {script} compiled no graph ({why})", file=sys.stderr)
        return code or 1
    shown = [(cf, sig, stages) for cf, sig, stages in graphs if _matches(cf, opts.function)]
    if not shown:
        names = sorted({_qualname(cf) for cf, _, _ in graphs})
        print(f"needle-ir: no compiled function matches --function {opts.function!r}; compiled: "
              f"{', '.join(names)}", file=sys.stderr)
        return code or 1

    if cuda:
        text, cuda_code = _cuda_outputs(shown, opts.out)
        sys.stdout.write(text)
        sys.stdout.flush()
        return code or cuda_code

    out = []
    for cf, signature, stages in shown:
        qualname = _qualname(cf)
        if opts.all:
            ran = [s for s in stages if s != "final"]
            selected = [(s, stages[s]) for s in ran]
            final = stages.get("final")
            if final is not None and (not ran or final != stages[ran[-1]]):
                selected.append(("final", final))
        else:
            name, graph = _stage_to_show(stages, opts.after, valid)
            if opts.after is not None and name != opts.after:
                print(f"needle-ir: pass {opts.after!r} did not run for {qualname} {signature}; "
                      f"showing the IR after {name!r}", file=sys.stderr)
            selected = [(name, graph)]
        for name, graph in selected:
            out.append(f"{HEADER} {qualname} {signature} after {name}\n")
            out.append(_render(graph, opts.format, opts.why_not_fused))
    sys.stdout.write("".join(out))
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
