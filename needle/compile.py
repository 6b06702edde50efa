"""`@needle.compile`: trace a function of Tensors into graph IR, run passes, execute.

    @needle.compile
    def f(x, w):
        return ndl.relu(x @ w).sum()

The first call with a new signature traces `f` (ops append IR nodes instead of
computing), runs the pass pipeline and caches the result; later calls whose signature and
guards match (`needle.guards`) run the cached graph. Tensors that `f` reads (arguments,
parameters, closed-over and global tensors) are graph inputs read at every call, bound by
where they live, so a rebound name or attribute is seen. `loss.backward()` inside `f`
becomes a `grad` request that the autodiff pass expands; each differentiated tensor's
`.grad` (arguments included) is written after every call. One compiled function may be
called from several threads: its calls run one at a time.
"""
from __future__ import annotations

import collections
import functools
import os
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from . import autograd, guards, init
from .autograd import Tensor, TensorTuple
from .distributed import check_same_graph
from .errors import IdError
from .backend_selection import BACKEND, array_api, default_device as _default_device
from .trace import tracer
from .trace.autodiff_request import request_gradients
from .ir.graph import Graph
from .ir.printer import print_graph
from .trace import state as trace_state
from .trace.tracer import GraphBuilder, tensor_type_of, tracing
from .passes import pipeline
from .passes.manager import PassContext
from .runtime import graph_cache
from .runtime.profile import format_table
from .runtime.interpreter import run_graph


def executor_kind(graph: Optional[Graph] = None) -> str:
    """`NEEDLE_EXECUTOR`: 'native' (the default on the nd backend: the whole graph as one
    native program, needle.runtime.native), 'kernels' (fused groups as LLVM kernels driven
    from Python), 'interp' (the reference interpreter; the default under NEEDLE_BACKEND=np)
    or 'cuda' (CUDA C for the whole graph, needle.runtime.cuda_executor; the default for a
    graph whose inputs are on an enabled `cuda()` device)."""
    kind = os.environ.get("NEEDLE_EXECUTOR")
    if kind is None:
        kind = "native" if BACKEND == "nd" else "interp"
        if graph is not None and BACKEND == "nd" and _on_cuda(graph):
            kind = "cuda"
    if kind not in pipeline.EXECUTORS:
        raise ValueError(f"NEEDLE_EXECUTOR={kind!r}: use one of {', '.join(pipeline.EXECUTORS)}")
    return kind


def _on_cuda(graph: Graph) -> bool:
    """True when a graph input lives on the cuda device and a GPU is there to run it."""
    from .backend_ndarray import cuda

    on = any(str(getattr(n.type, "device", "")).startswith("cuda") for n in graph.inputs)
    return on and cuda().enabled()


#: compiled graphs kept per function (least recently used first out); `NEEDLE_COMPILE_CACHE_SIZE`
CACHE_SIZE = int(os.environ.get("NEEDLE_COMPILE_CACHE_SIZE", "64"))

#: tracing changes process-wide state (tensor birth counter, hooked classes): one at a time
_TRACE_LOCK = threading.RLock()


class _Entry:
    """One compiled graph: the signature and guards it is valid for, how its inputs bind to
    Python objects, what its extra outputs write back, and its checks."""

    def __init__(self, graph: Graph, runner: Callable, snapshots: dict, bindings: list,
                 n_outputs: int, writes: list, structure: Any, checks: list):
        self.graph = graph
        self.runner = runner              # runs the graph on the input arrays
        self.snapshots = snapshots
        # per input node: ("arg", i) | ("kwarg", name) | ("tensor", t) | ("slot", holder, key)
        # | ("hyper", obj, attr) | ("const", array)
        self.bindings = bindings
        self.n_outputs = n_outputs
        # per output after the returned ones: ("grad" | "data", binding) | ("slot", (holder, key))
        # | ("hyper", (obj, attr))
        self.writes = writes
        self.structure = structure        # how to rebuild the returned Python value
        self.checks = checks              # (node id, error): the last outputs, raised on when non-zero
        self.input_shapes = [n.type.shape for n in graph.inputs]
        self.input_names = [n.attr("name") for n in graph.inputs]
        # the inputs bound to constants, filled in once; the others (index, binding) read per call
        self.constants = [b[1] if b[0] == "const" else None for b in bindings]
        self.read = [(i, b, self.input_shapes[i], self.input_names[i]) for i, b in enumerate(bindings)
                     if b[0] != "const"]
        self.signature: tuple = ()
        self.arg_names: list[str] = []
        self.guards = guards.GuardSet([])
        self.keepalive: tuple = ()        # objects keyed by identity stay alive (ids never reused)


#: every CompiledFunction created in this process (needle-ir lists their graphs)
REGISTRY: list = []


def compiled_functions() -> list:
    """All compiled functions created so far, in creation order."""
    return list(REGISTRY)


#: what `NEEDLE_LOG` (comma-separated) may ask for: why a function recompiles; why a graph
#: runs on a slower executor than the default (native or CUDA)
LOG_TOPICS = ("recompile", "native")


def _log(what: str) -> bool:
    topics = [t.strip() for t in os.environ.get("NEEDLE_LOG", "").split(",") if t.strip()]
    unknown = [t for t in topics if t not in LOG_TOPICS]
    if unknown:
        raise ValueError(f"NEEDLE_LOG={os.environ['NEEDLE_LOG']!r}: unknown {', '.join(unknown)}; "
                         f"use any of {', '.join(LOG_TOPICS)} (comma-separated)")
    return what in topics


class CompiledFunction:
    """A traced-and-compiled function with a per-signature cache (see module docstring)."""

    def __init__(self, fn: Callable):
        functools.update_wrapper(self, fn)
        REGISTRY.append(self)
        self.fn = fn
        self._cache: collections.OrderedDict = collections.OrderedDict()  # (signature, n) -> _Entry
        self._last_key: Optional[tuple] = None
        self._serial = 0
        self._lock = threading.RLock()
        self.stats = {"calls": 0, "traces": 0, "compiles": 0, "cache_hits": 0, "nodes": 0, "kernels": 0,
                      "compile_seconds": 0.0}

    def __call__(self, *args, **kwargs):
        with self._lock:
            self.stats["calls"] += 1
            sig = guards.signature(args, kwargs) + (("backend", BACKEND),)
            key, reason = self._lookup(sig)
            if key is None:
                if _log("recompile") and self._cache:
                    for change in reason or self._signature_change(sig, len(args)):
                        print(f"needle: recompiling {self.fn.__qualname__}: {change}", file=sys.stderr)
                with _TRACE_LOCK:
                    entry = self._compile(args, kwargs)
                entry.signature = sig
                key = (sig, self._serial)
                self._serial += 1
                self._cache[key] = entry
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
            else:
                self.stats["cache_hits"] += 1
                self._cache.move_to_end(key)
            self._last_key = key
            return self._run(self._cache[key], key, args, kwargs)

    def _lookup(self, sig: tuple) -> tuple[Optional[tuple], list[str]]:
        """The key of the newest entry for `sig` whose guards hold, or (None, what failed)."""
        failed: list[str] = []
        for key in reversed(self._cache):
            if key[0] != sig:
                continue
            guard = self._cache[key].guards.failing()
            if guard is None:
                return key, []
            failed = failed or [guard.describe_change()]
        return None, failed

    def _signature_change(self, sig: tuple, n_args: int) -> list[str]:
        last = self._cache[self._last_key] if self._last_key in self._cache else next(reversed(self._cache.values()))
        names = guards.parameter_names(self.fn, n_args)
        return (guards.describe_signature_change(last.signature, sig, names)
                or [f"backend: {last.signature[-1][1]} → {sig[-1][1]}"])

    # ---- tracing ------------------------------------------------------------------------
    def _compile(self, args: tuple, kwargs: dict) -> _Entry:
        start = time.perf_counter()
        roots = trace_state.roots(self.fn, args, kwargs)
        named = guards.name_guards(self.fn)
        for obj in trace_state.state_snapshot(roots, named)[1]:
            for opt in trace_state.optimizers(obj):
                opt.init_state()  # buffers eager creates on the first step, zero-filled
        holders, stateful, objects = trace_state.state_snapshot(roots, named)
        builder = GraphBuilder(getattr(self.fn, "__qualname__", "fn"), birth=autograd._BIRTHS + 1)
        builder.slots = {id(t): (obj, key, path) for obj, key, t, path in holders.values()}
        traced_args = [self._trace_arg(builder, a, f"arg{i}", ("arg", i)) for i, a in enumerate(args)]
        traced_kwargs = {k: self._trace_arg(builder, v, k, ("kwarg", k)) for k, v in kwargs.items()}
        saved_grads = {}
        try:
            with tracing(builder), guards.recording_reads([o for o, _ in objects.values()]) as reads:
                result = self.fn(*traced_args, **traced_kwargs)
                flat, structure = _flatten(result)
                out_ids = [(x if x._trace is not None else builder.lift(x))._trace.node_id for x in flat]
                # what each differentiated tensor's .grad holds when the function returns: a
                # gradient reassigned after backward() (averaged, clipped...) is written back
                grad_targets = {id(ext): (ext, ext.grad if getattr(ext.grad, "_trace", None) is not None else g)
                                for ext, g in builder.grad_targets}
        finally:
            slot_updates = trace_state.take_slot_updates(holders)
            created = trace_state.take_new_traced_entries(roots, named, holders)
            for target, _ in builder.data_updates.values():
                target._trace = None
            for external, _ in builder.grad_targets:
                saved_grads.setdefault(id(external), (external, None))
            for external, previous in saved_grads.values():
                external.grad = previous  # no traced value leaks out of the trace
        if created:
            raise tracer.TraceError(
                f"{self.fn.__qualname__} creates state while compiled ({', '.join(created)}): a "
                "compiled function can only update state that exists before it is called; create "
                "it (e.g. zero-filled) before the first call")
        binding_of = trace_state.bindings_by_tensor(builder)  # tensors made by the trace have none: not written
        writes = ([("grad", binding_of[id(ext)], g) for ext, g in grad_targets.values() if id(ext) in binding_of]
                  + [("data", binding_of[id(t)], v) for t, v in builder.data_updates.values() if id(t) in binding_of]
                  + [("slot", (obj, key), v) for obj, key, v in slot_updates]
                  + [("hyper", (obj, attr), v) for obj, attr, v in builder.hyper_updates.values()])
        out_ids += [_node_of(builder, v) for _, _, v in writes] + [nid for nid, _ in builder.checks]
        graph = builder.graph(out_ids)
        check_same_graph(graph)   # ranks that traced different collectives fail here, not in a deadlock
        self.stats["traces"] += 1
        runner, final, snapshots = self._build(graph)
        bindings = [("const", _to_backend(bound)) if role == "const" else bound
                    for _, bound, role in builder.inputs]
        entry = _Entry(final, runner, snapshots, bindings, len(flat),
                       [(kind, target) for kind, target, _ in writes], structure, builder.checks)
        # hyper-parameters and tensors bound as inputs are read at every call: no guard
        unguarded = set(builder.hypers) | set(builder.hyper_updates) | {
            (id(b[1]), b[2]) for _, b, role in builder.inputs if role != "const" and b[0] == "slot"}
        entry.guards = guards.GuardSet(
            [g for _, g, holder, key in named if (id(holder), key) not in unguarded]
            + [guards.attribute_guard(f"{objects[oid][1]}.{name}", obj, name)
               for (oid, name), (obj, _) in reads.items() if (oid, name) not in unguarded])
        entry.arg_names = guards.parameter_names(self.fn, len(args))
        entry.keepalive = tuple(args) + tuple(kwargs.values())
        self.stats["compiles"] += 1
        self.stats["compile_seconds"] += time.perf_counter() - start
        return entry

    @staticmethod
    def _trace_arg(builder: GraphBuilder, value: Any, name: str, binding: tuple) -> Any:
        """A Tensor argument's traced stand-in (a graph input read at every call); other values
        are passed as they are (they are part of the signature)."""
        if not isinstance(value, Tensor):
            return value
        if id(value) in builder.lifted:  # the same tensor passed twice: one input
            return builder.lifted[id(value)][1]
        type_ = tensor_type_of(value.realize_cached_data())
        nid = builder.add_input(name, "arg", type_, binding)
        proxy = builder.traced(Tensor, nid, type_, requires_grad=value.requires_grad)
        builder.lifted[id(value)] = (value, proxy)  # its gradient is written to its .grad
        return proxy

    def _build(self, graph: Graph) -> tuple[Callable, Graph, dict]:
        """Run the pipeline on a traced graph (or take its graph passes' result from the disk
        cache) and build its runner: (runner, final graph, pass snapshots)."""
        ctx = PassContext()
        if ctx.dump_dir:  # one folder per function and signature, so dumps never overwrite
            ctx.dump_dir = os.path.join(ctx.dump_dir, f"{graph.name}-{self._serial}")
        kind = executor_kind(graph)
        # dumping IR or bisecting passes needs the passes to run: no warm start then
        debugging = ctx.dump_dir or ctx.pass_limit is not None
        cached = None if debugging else graph_cache.load(graph, pipeline.GRAPH_PASSES)
        if cached is None:
            final, plan = pipeline.run(graph, kind, ctx)
            final = pipeline.expand_grad_requests(final, kind, ctx)  # NEEDLE_PASS_LIMIT stopped before autodiff
            if not debugging:
                graph_cache.store(graph, pipeline.GRAPH_PASSES, {
                    name: g for name, g in ctx.snapshots.items() if name == "input" or name in pipeline.GRAPH_PASSES})
        else:  # warm start: no graph pass runs; the kernel executor's passes still do
            self.stats["graph_cache_hits"] = self.stats.get("graph_cache_hits", 0) + 1
            final, plan = cached[list(cached)[-1]], None  # the other stages are parsed when asked for
            if kind != "interp":
                final, plan = pipeline.run(final, kind, ctx, pipeline.KERNEL_PASSES)
            for name, g in ctx.snapshots.items():
                if name != "input":  # the kernel passes' own "input" is the cached final graph
                    cached[name] = g
            ctx.snapshots = cached
        if plan is None:  # the interpreter, or NEEDLE_PASS_LIMIT cut the analyses off
            kind = "interp"
        runner = None
        # lazy: an executor's code generator and JIT (llvmlite, nvcc) load when a graph is
        # first compiled for it, not at `import needle`
        if kind == "cuda":
            from .codegen.cuda import CudaCodegenError, build_program
            from .runtime.cuda_executor import CudaGraphExecutor

            try:
                runner = CudaGraphExecutor(final, plan, program=build_program(final, plan))
            except CudaCodegenError as e:
                if _log("native") or _log("recompile"):
                    print(f"needle: {self.fn.__qualname__} runs on the interpreter: {e}", file=sys.stderr)
                kind = "interp"
        if kind == "native":
            from .runtime.native import NativeExecutor, NativeUnsupported

            try:
                runner = NativeExecutor(final, plan.fusion, plan.schedule, plan.memory)
                self.stats.update(native=runner.stats)
                self.stats["llvm_kernels"] = runner.stats["llvm_kernels"]
            except NativeUnsupported as e:
                if _log("recompile") or _log("native"):
                    print(f"needle: {self.fn.__qualname__} runs on the kernel executor: {e}", file=sys.stderr)
                kind = "kernels"
        if kind == "kernels":
            from .runtime.executor import KernelExecutor

            runner = KernelExecutor(final, plan.fusion, plan.schedule)
            self.stats["llvm_kernels"] = runner.llvm_kernels
        elif runner is None:
            runner = functools.partial(run_graph, final)
        self.stats["nodes"] = len(final.nodes)
        self.stats["kernels"] = (len(runner.steps) if kind != "interp"
                                 else sum(1 for n in final.nodes if n.op not in ("input", "const")))
        self.stats["executor"] = kind
        return runner, final, ctx.snapshots

    # ---- running ------------------------------------------------------------------------
    def _inputs(self, entry: _Entry, args: tuple, kwargs: dict) -> tuple[Optional[list], str]:
        """Backend arrays for the graph inputs, read now; (None, why) if a bound tensor
        changed shape or is no longer a Tensor."""
        inputs = entry.constants.copy()
        scalars = getattr(entry.runner, "takes_scalars", False)
        for i, binding, shape, name in entry.read:
            if binding[0] == "hyper":
                value = float(getattr(binding[1], binding[2]))
                if not scalars:
                    value = array_api.full((), value, dtype="float32", device=_default_device())
            else:
                tensor = trace_state.resolve_binding(binding, args, kwargs)
                if not isinstance(tensor, Tensor):
                    return None, f"`{name}` is now a {type(tensor).__name__}, not a Tensor"
                value = tensor.realize_cached_data()
                if tuple(value.shape) != shape:
                    return None, f"`{name}`, shape: {shape} → {tuple(value.shape)}"
            inputs[i] = value
        return inputs, ""

    def _run(self, entry: _Entry, key: tuple, args: tuple, kwargs: dict):
        inputs, why = self._inputs(entry, args, kwargs)
        if inputs is None:  # an attribute or global was rebound to a tensor of another shape
            if _log("recompile"):
                print(f"needle: recompiling {self.fn.__qualname__}: {why}", file=sys.stderr)
            del self._cache[key]
            return self(*args, **kwargs)
        outputs = entry.runner(inputs)
        extra = outputs[entry.n_outputs:]
        for (_, message), value in zip(entry.checks, outputs[len(outputs) - len(entry.checks):]):
            if _scalar(value) != 0:  # checked before anything is written back
                raise IdError(message)
        for (kind, target), value in zip(entry.writes, extra):
            if kind == "grad":
                trace_state.resolve_binding(target, args, kwargs).grad = Tensor.make_const(value)
            elif kind == "data":
                trace_state.resolve_binding(target, args, kwargs).cached_data = value
            elif kind == "slot":
                trace_state.set_slot(*target, Tensor.make_const(value))
            elif kind == "hyper":
                holder, attr = target
                number = float(_scalar(value))
                setattr(holder, attr, int(round(number)) if isinstance(getattr(holder, attr), int) else number)
        results = [Tensor.make_const(o) if not isinstance(o, tuple) else TensorTuple.make_const(o)
                   for o in outputs[:entry.n_outputs]]
        return _unflatten(results, entry.structure)

    def ir(self, stage: str = "final") -> str:
        """Text IR of the most recent signature after pass `stage` ('input' = as traced)."""
        if not self._cache:
            raise RuntimeError(f"{self.fn.__qualname__} has not been compiled yet: call it first")
        entry = self._cache[self._last_key]
        graph = entry.graph if stage == "final" else entry.snapshots.get(stage)
        if graph is None:
            raise KeyError(f"no IR after pass {stage!r}; stages: {['input', *entry.snapshots, 'final']}")
        return print_graph(graph)

    def profile(self) -> str:
        """Per-kernel time, GFLOP/s, GB/s and roofline fraction of every compiled signature
        (one table each), as printed at exit under NEEDLE_PROFILE=1 (native or kernel executor)."""
        name = self.fn.__qualname__
        if not self._cache:
            raise RuntimeError(f"{name} has not been compiled yet: call it first")
        tables = []
        for key, entry in self._cache.items():
            steps = getattr(entry.runner, "profile", None)
            if not hasattr(entry.runner, "steps"):
                raise RuntimeError(f"{name} runs on the interpreter executor: profiling needs "
                                   "NEEDLE_EXECUTOR=native or kernels (and NEEDLE_PROFILE=1) when it is compiled")
            if steps is None:
                raise RuntimeError(f"{name} was compiled without profiling: set NEEDLE_PROFILE=1 "
                                   "before its first call")
            tables.append(format_table(steps, f"{name} {_signature_text(entry)}"))
        return "\n\n".join(tables)

    @property
    def graphs(self) -> list:
        """(signature, final graph) for every compiled signature."""
        return [(key, entry.graph) for key, entry in self._cache.items()]

    @property
    def compiled(self) -> int:
        """How many graphs this function has compiled (evicted ones included)."""
        return self._serial

    def entries(self, since: int = 0) -> list:
        """(signature text, {stage: Graph}) per cached signature, in compile order, of the
        graphs compiled after the first `since`; stages are 'input' (as traced), each pass
        name in pipeline order, and 'final'."""
        out = []
        for key, entry in sorted(self._cache.items(), key=lambda item: item[0][1]):
            if key[1] < since:
                continue
            stages = dict(entry.snapshots)
            stages["final"] = entry.graph
            out.append((_signature_text(entry), stages))
        return out


def _node_of(builder, value) -> int:
    """The node id of a value written back after the call (lifted if it is a real tensor)."""
    if value._trace is None:
        value = builder.lift(value)
    return value._trace.node_id


def _scalar(value) -> float:
    return float(value.numpy() if hasattr(value, "numpy") else np.asarray(value).reshape(-1)[0])


def _signature_text(entry: _Entry) -> str:
    """A short readable form of a signature: the arguments' types and values."""
    positional, keywords = entry.signature[0], entry.signature[1]
    return "(" + ", ".join([guards.show_key(k) for k in positional]
                           + [f"{k}={guards.show_key(v)}" for k, v in keywords]) + ")"


def _to_backend(array):
    if BACKEND == "np":
        return array
    from .backend_ndarray import array as nd_array

    return nd_array(array)


def _flatten(result):
    if isinstance(result, Tensor):
        return [result], None
    if isinstance(result, (tuple, list)) and all(isinstance(r, Tensor) for r in result):
        return list(result), (type(result), len(result))
    raise tracer.TraceError(
        f"a compiled function must return a Tensor or a tuple/list of Tensors, got {type(result).__name__}")


def _unflatten(results, structure):
    if structure is None:
        return results[0]
    kind, _ = structure
    return kind(results)


class TracedGraph(NamedTuple):
    """A function's primitive graph (`trace_graph`): its inputs' bindings (as a compiled
    call reads them: args, then state) and how many of its outputs the function returned."""
    graph: Graph
    bindings: list
    n_outputs: int


class _GraphPasses(CompiledFunction):
    """A compiled function whose build stops after the graph passes: no code is generated."""

    def _build(self, graph: Graph) -> tuple[None, Graph, dict]:
        ctx = PassContext(dump_dir="", pass_limit=len(pipeline.GRAPH_PASSES))
        final, _ = pipeline.run(graph, "interp", ctx)
        return None, final, ctx.snapshots


def trace_graph(fn: Callable, args: tuple) -> TracedGraph:
    """Trace `fn(*args)` as `@needle.compile` does and run the graph passes (decompose ...
    simplify): the primitive graph that tools such as ONNX export translate. Nothing is
    compiled and the function is not kept among `compiled_functions()`."""
    traced = _GraphPasses(fn)
    try:
        with _TRACE_LOCK:
            entry = traced._compile(tuple(args), {})
    finally:
        REGISTRY.remove(traced)
    return TracedGraph(entry.graph, entry.bindings, entry.n_outputs)


def compile(fn: Optional[Callable] = None):  # noqa: A001  (the public name is needle.compile)
    """Compile a function of Tensors (or a Module's forward) into a cached graph."""
    if fn is None:
        return compile
    if hasattr(fn, "forward") and hasattr(fn, "parameters"):
        return CompiledFunction(fn.forward)
    return CompiledFunction(fn)


def value_and_grad(f: Callable, argnums=0) -> Callable:
    """JAX-style: a function returning (f(*args), gradient(s) of f w.r.t. args[argnums])."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def wrapped(*args):
        args = list(args)
        for i in nums:
            if not args[i].requires_grad:  # differentiate w.r.t. a fresh leaf
                d = args[i].detach()
                d.requires_grad = True
                args[i] = d
        for i in nums:
            args[i].grad = None
        value = f(*args)
        if value._trace is not None:  # traced: the arguments may be intermediate values
            request_gradients(value, targets=[args[i] for i in nums])
        else:
            value.backward()
        grads = [args[i].grad if args[i].grad is not None else init.zeros_like(args[i]) for i in nums]
        return value, (grads[0] if isinstance(argnums, int) else tuple(grads))

    return wrapped


def grad(f: Callable, argnums=0) -> Callable:
    """JAX-style: a function returning the gradient(s) of f w.r.t. args[argnums]."""
    vg = value_and_grad(f, argnums)
    return lambda *args: vg(*args)[1]
