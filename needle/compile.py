"""`@needle.compile`: trace a function of Tensors into graph IR, run passes, execute.

    @needle.compile
    def f(x, w):
        return ndl.relu(x @ w).sum()

The first call with a new signature traces `f` (ops append IR nodes instead of
computing), runs the pass pipeline (autodiff, simplify) and caches the result; later calls
with the same signature run the cached graph. Tensors used by `f` that existed before the
call (parameters, closed-over tensors) become graph inputs read at every call, so updated
parameter values are always seen. `loss.backward()` inside `f` becomes a `grad` request
that the autodiff pass expands; each such tensor's `.grad` is written after every call.
The graph runs on the reference interpreter (`needle.runtime`).

Not yet captured (raise TraceError): assigning `Tensor.data` inside the function, which is
what `opt.step()` does — compiled optimizer steps come with the next compiler milestone.
"""
from __future__ import annotations

import functools
import os
import sys
import time
import types
from typing import Any, Callable, Optional

import numpy as np

from . import autograd, init
from .autograd import Tensor, TensorTuple
from .backend_selection import BACKEND, array_api, default_device as _default_device
from .ir import tracer
from .ir.graph import Graph
from .ir.tracer import GraphBuilder, tensor_type_of, tracing
from .runtime import graph_cache
from .runtime.interpreter import run_graph

PIPELINE = ("decompose", "autodiff", "simplify")
#: the passes of the kernel executors: recompute rewrites the graph for fusion, the others
#: are analyses (the graph is unchanged by them)
KERNEL_PIPELINE = ("recompute", "fusion", "schedule", "memory_plan")


EXECUTORS = ("native", "kernels", "interp", "cuda")


def executor_kind(graph: Optional[Graph] = None) -> str:
    """`NEEDLE_EXECUTOR`: 'native' (the default on the nd backend: the whole graph as one
    native program, needle.runtime.native), 'kernels' (fused groups as LLVM kernels driven
    from Python), 'interp' (the reference interpreter; the default under NEEDLE_BACKEND=np)
    or 'cuda' (CUDA C for the whole graph, needle.runtime.cuda_executor; the default for a
    graph whose inputs are on an enabled `cuda()` device)."""
    from .backend_selection import BACKEND

    kind = os.environ.get("NEEDLE_EXECUTOR")
    if kind is None:
        kind = "native" if BACKEND == "nd" else "interp"
        if graph is not None and BACKEND == "nd" and _on_cuda(graph):
            kind = "cuda"
    if kind not in EXECUTORS:
        raise ValueError(f"NEEDLE_EXECUTOR={kind!r}: use one of {', '.join(EXECUTORS)}")
    return kind


def _on_cuda(graph: Graph) -> bool:
    """True when a graph input lives on the cuda device and a GPU is there to run it."""
    from .backend_ndarray import cuda

    on = any(str(getattr(n.type, "device", "")).startswith("cuda") for n in graph.inputs)
    return on and cuda().enabled()


def _pass_manager(kind: str):
    return _pass_manager_for(PIPELINE + (KERNEL_PIPELINE if kind != "interp" else ()))


def _pass_manager_for(names):
    from . import passes  # noqa: F401  (registers the passes)
    from .passes.manager import PASSES, PassManager

    return PassManager([PASSES[name] for name in names if name in PASSES])


class _Entry:
    """One compiled signature: its graph, pass snapshots and input bindings."""

    def __init__(self, graph: Graph, runner: Callable, snapshots: dict, bindings: list,
                 n_outputs: int, writes: list, structure: Any):
        self.graph = graph
        self.runner = runner              # runs the graph on the input arrays
        self.snapshots = snapshots
        # per input node: ("arg", i) | ("tensor", t) | ("slot", holder, key) | ("hyper", obj, attr) | ("const", a)
        self.bindings = bindings
        self.n_outputs = n_outputs
        # per trailing output: ("grad", tensor) | ("data", tensor) | ("slot", (holder, key)) | ("hyper", (obj, attr))
        self.writes = writes
        self.structure = structure        # how to rebuild the returned Python value
        self.input_shapes = [n.type.shape for n in graph.inputs]


def _signature(args: tuple, kwargs: dict) -> tuple:
    def one(a):
        if isinstance(a, Tensor):
            return ("Tensor", tuple(a.shape), str(a.dtype), str(a.device), a.requires_grad)
        if hasattr(a, "training") and hasattr(a, "parameters"):
            return ("Module", id(a), tuple(m.training for m in _modules(a)))
        try:
            hash(a)
            return ("static", a)
        except TypeError:
            return ("static", id(a))
    return (tuple(one(a) for a in args), tuple(sorted((k, one(v)) for k, v in kwargs.items())),
            ("backend", BACKEND))


def _closure_key(stateful: list) -> tuple:
    """Training flags of the modules and hyper-parameters (but the learning rate and step
    count, which are graph inputs) of the optimizers that the function reaches."""
    key = []
    for obj in stateful:
        if _optimizers(obj):
            key.append(tuple((h, getattr(obj, h)) for h in obj._hyper if h != "lr"))
        else:
            key.append(obj.training)
    return tuple(key)


def _modules(module) -> list:
    children = getattr(module, "_children", None)
    return [module] + (list(children()) if callable(children) else [])


#: every CompiledFunction created in this process (needle-ir lists their graphs)
REGISTRY: list = []


def compiled_functions() -> list:
    """All compiled functions created so far, in creation order."""
    return list(REGISTRY)


class CompiledFunction:
    """A traced-and-compiled function with a per-signature cache (see module docstring)."""

    def __init__(self, fn: Callable):
        functools.update_wrapper(self, fn)
        REGISTRY.append(self)
        self.fn = fn
        self._cache: dict = {}
        self._last_key: Optional[tuple] = None
        self._stateful: Optional[list] = None  # modules and optimizers the function reaches
        self.stats = {"traces": 0, "compiles": 0, "cache_hits": 0, "nodes": 0, "kernels": 0,
                      "compile_seconds": 0.0}

    def __call__(self, *args, **kwargs):
        if self._stateful is None:
            self._stateful = _state_snapshot(_roots(self.fn, args, kwargs))[1]
        key = _signature(args, kwargs) + (("closure", _closure_key(self._stateful)),)
        entry = self._cache.get(key)
        if entry is None:
            self._explain_miss(key)
            entry = self._cache[key] = self._compile(args, kwargs)
        else:
            self.stats["cache_hits"] += 1
        self._last_key = key
        return self._run(entry, args)

    # ---- tracing ------------------------------------------------------------------------
    def _compile(self, args: tuple, kwargs: dict) -> _Entry:
        start = time.perf_counter()
        roots = _roots(self.fn, args, kwargs)
        for obj in _state_snapshot(roots)[1]:
            for opt in _optimizers(obj):
                opt.init_state()  # buffers eager creates on the first step, zero-filled
        holders, self._stateful = _state_snapshot(roots)
        builder = GraphBuilder(getattr(self.fn, "__qualname__", "fn"), birth=autograd._BIRTHS + 1)
        builder.slots = {id(t): (obj, key, path) for obj, key, t, path in holders.values()}
        traced_args = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                type_ = tensor_type_of(a.realize_cached_data())
                nid = builder.add_input(f"arg{i}", "arg", type_, ("arg", i))
                traced_args.append(builder.traced(Tensor, nid, type_, requires_grad=a.requires_grad))
            else:
                traced_args.append(a)
        saved_grads = {}
        try:
            with tracing(builder):
                result = self.fn(*traced_args, **kwargs)
                flat, structure = _flatten(result)
                out_ids = [(x if x._trace is not None else builder.lift(x))._trace.node_id for x in flat]
        finally:
            slot_updates = _take_slot_updates(holders)
            created = _take_new_traced_entries(roots, holders)
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
        writes = ([("grad", ext, g) for ext, g in builder.grad_targets]
                  + [("data", t, v) for t, v in builder.data_updates.values()]
                  + [("slot", (obj, key), v) for obj, key, v in slot_updates]
                  + [("hyper", (obj, attr), v) for obj, attr, v in builder.hyper_updates.values()])
        out_ids += [_node_of(builder, v) for _, _, v in writes]
        graph = builder.graph(out_ids)
        self.stats["traces"] += 1
        from .passes.manager import PassContext

        ctx = PassContext()
        if ctx.dump_dir:  # one folder per function and signature, so dumps never overwrite
            ctx.dump_dir = os.path.join(ctx.dump_dir, f"{graph.name}-{len(self._cache)}")
        kind = executor_kind(graph)
        # dumping IR or bisecting passes needs the passes to run: no warm start then
        debugging = ctx.dump_dir or ctx.pass_limit is not None
        cached = None if debugging else graph_cache.load(graph, PIPELINE)
        if cached is None:
            final = _pass_manager(kind).run(graph, ctx)
            if not debugging:
                graph_cache.store(graph, PIPELINE, {name: g for name, g in ctx.snapshots.items()
                                                   if name == "input" or name in PIPELINE})
        else:  # warm start: no graph pass runs; the kernel executor's analyses still do
            self.stats["graph_cache_hits"] = self.stats.get("graph_cache_hits", 0) + 1
            final = cached[list(cached)[-1]]  # the other stages are parsed when asked for
            if kind != "interp":
                final = _pass_manager_for(KERNEL_PIPELINE).run(final, ctx)
            for name, g in ctx.snapshots.items():
                if name != "input":  # the analyses' own "input" is the cached final graph
                    cached[name] = g
            ctx.snapshots = cached
        runner = None
        if kind == "cuda":
            from .codegen.cuda import CudaCodegenError
            from .runtime.cuda_executor import CudaGraphExecutor

            try:
                runner = CudaGraphExecutor(final, ctx.options["fusion_plan"], ctx.options["schedule"],
                                           ctx.options["memory_plan"])
            except CudaCodegenError as e:
                if "native" in os.environ.get("NEEDLE_LOG", "") or "recompile" in os.environ.get("NEEDLE_LOG", ""):
                    print(f"needle: {self.fn.__qualname__} runs on the interpreter: {e}", file=sys.stderr)
                kind = "interp"
        if kind == "native":
            from .runtime.native import NativeExecutor, NativeUnsupported

            try:
                runner = NativeExecutor(final, ctx.options["fusion_plan"], ctx.options["schedule"],
                                        ctx.options["memory_plan"])
                self.stats.update(native=runner.stats)
                self.stats["llvm_kernels"] = runner.stats["llvm_kernels"]
            except NativeUnsupported as e:
                if "recompile" in os.environ.get("NEEDLE_LOG", "") or "native" in os.environ.get("NEEDLE_LOG", ""):
                    print(f"needle: {self.fn.__qualname__} runs on the kernel executor: {e}", file=sys.stderr)
                kind = "kernels"
        if kind == "kernels":
            from .runtime.executor import KernelExecutor

            runner = KernelExecutor(final, ctx.options["fusion_plan"], ctx.options["schedule"])
            self.stats["llvm_kernels"] = runner.llvm_kernels
        elif runner is None:
            runner = functools.partial(run_graph, final)
        bindings = [("const", _to_backend(bound)) if role == "const" else bound
                    for _, bound, role in builder.inputs]
        self.stats["compiles"] += 1
        self.stats["nodes"] = len(final.nodes)
        self.stats["kernels"] = sum(1 for n in final.nodes if n.op not in ("input", "const"))
        self.stats["compile_seconds"] += time.perf_counter() - start
        self.stats["kernels"] = (len(runner.steps) if kind != "interp" else self.stats["kernels"])
        self.stats["executor"] = kind
        return _Entry(final, runner, ctx.snapshots, bindings, len(flat),
                      [(kind, target) for kind, target, _ in writes], structure)

    def _explain_miss(self, key: tuple) -> None:
        if self._last_key is None or "recompile" not in os.environ.get("NEEDLE_LOG", ""):
            return
        old, new = self._last_key, key
        for field, a, b in _diff(old, new):
            print(f"needle: recompiling {self.fn.__qualname__}: {field} changed from {a!r} to {b!r}",
                  file=sys.stderr)

    # ---- running ------------------------------------------------------------------------
    def _inputs(self, entry: _Entry, args: tuple) -> Optional[list]:
        """Backend arrays for the graph inputs, read now; None if a bound shape changed."""
        inputs = []
        scalars = getattr(entry.runner, "takes_scalars", False)
        for binding, shape in zip(entry.bindings, entry.input_shapes):
            kind = binding[0]
            if kind == "hyper":
                value = float(getattr(binding[1], binding[2]))
                if not scalars:
                    value = array_api.full((), value, dtype="float32", device=_default_device())
            elif kind == "const":
                value = binding[1]
            else:
                if kind == "arg":
                    tensor = args[binding[1]]
                elif kind == "slot":
                    holder, key = binding[1], binding[2]
                    tensor = holder[key] if isinstance(holder, dict) else getattr(holder, key)
                else:
                    tensor = binding[1]
                value = tensor.realize_cached_data()
                if tuple(value.shape) != shape:
                    return None
            inputs.append(value)
        return inputs

    def _run(self, entry: _Entry, args: tuple):
        inputs = self._inputs(entry, args)
        if inputs is None:  # a module attribute was replaced by a tensor of another shape
            self._cache = {k: e for k, e in self._cache.items() if e is not entry}
            return self(*args)
        outputs = entry.runner(inputs)
        results = [Tensor.make_const(o) if not isinstance(o, tuple) else TensorTuple.make_const(o)
                   for o in outputs[:entry.n_outputs]]
        for (kind, target), value in zip(entry.writes, outputs[entry.n_outputs:]):
            if kind == "grad":
                target.grad = Tensor.make_const(value)
            elif kind == "data":
                target.cached_data = value
            elif kind == "slot":
                holder, key = target
                if isinstance(holder, dict):
                    holder[key] = Tensor.make_const(value)
                else:
                    setattr(holder, key, Tensor.make_const(value))
            else:
                holder, attr = target
                number = float(value.numpy() if hasattr(value, "numpy") else value)
                setattr(holder, attr, int(round(number)) if isinstance(getattr(holder, attr), int) else number)
        return _unflatten(results, entry.structure)

    def ir(self, stage: str = "final") -> str:
        """Text IR of the most recent signature after pass `stage` ('input' = as traced)."""
        from .ir.printer import print_graph

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
        from .runtime.profile import format_table

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
            tables.append(format_table(steps, f"{name} {_signature_text(key)}"))
        return "\n\n".join(tables)

    @property
    def graphs(self) -> list:
        """(signature, final graph) for every compiled signature."""
        return [(key, entry.graph) for key, entry in self._cache.items()]

    def entries(self) -> list:
        """(signature text, {stage: Graph}) per compiled signature; stages are 'input'
        (as traced), each pass name in pipeline order, and 'final'."""
        out = []
        for key, entry in self._cache.items():
            stages = dict(entry.snapshots)
            stages["final"] = entry.graph
            out.append((_signature_text(key), stages))
        return out


def _node_of(builder, value) -> int:
    """The node id of a value written back after the call (lifted if it is a real tensor)."""
    if value._trace is None:
        value = builder.lift(value)
    return value._trace.node_id


def _roots(fn, args=(), kwargs=None) -> list:
    """(name, object) for what a function can reach: arguments, closure cells, globals it
    names, and the bound instance of a method."""
    roots = [(f"arg{i}", a) for i, a in enumerate(args)] + list((kwargs or {}).items())
    code = getattr(fn, "__code__", None)
    for name, cell in zip(code.co_freevars if code else (), getattr(fn, "__closure__", None) or ()):
        try:
            roots.append((name, cell.cell_contents))
        except ValueError:
            continue
    fn_globals = getattr(fn, "__globals__", {})
    roots += [(n, fn_globals[n]) for n in (code.co_names if code else ()) if n in fn_globals]
    bound = getattr(fn, "__self__", None)
    if bound is not None:
        roots.append(("self", bound))
    return roots


def _optimizers(obj) -> list:
    return [obj] if hasattr(obj, "params") and hasattr(obj, "_buffer_names") else []


def _state_snapshot(roots: list) -> tuple[dict, list]:
    """Attributes and dict entries holding Tensors on the objects reachable from roots:
    {(id(holder), key): (holder, key, tensor, path)}, path like `model.modules[0].weight`;
    and the modules and optimizers found on the way."""
    snapshot: dict = {}
    stateful: list = []
    seen: set = set()

    def visit(obj, depth, path):
        if depth > 64 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                visit(item, depth + 1, f"{path}[{i}]")
        elif isinstance(obj, dict):
            for key, item in list(obj.items()):
                if isinstance(item, autograd.Value):
                    snapshot[(id(obj), key)] = (obj, key, item, f"{path}[{key!r}]")
                visit(item, depth + 1, f"{path}[{key!r}]")
        elif _is_state_holder(obj):
            if _optimizers(obj) or (hasattr(obj, "training") and hasattr(obj, "_children")):
                stateful.append(obj)
            for key, item in list(vars(obj).items()):
                if isinstance(item, autograd.Value):
                    snapshot[(id(obj), key)] = (obj, key, item, f"{path}.{key}")
                else:
                    visit(item, depth + 1, f"{path}.{key}")

    for name, root in roots:
        visit(root, 0, name)
    return snapshot, stateful


def _take_new_traced_entries(roots: list, snapshot: dict) -> list:
    """Remove dict entries and attributes that the trace created holding traced values; name them."""
    current, _ = _state_snapshot(roots)
    created = []
    for key, (obj, name, value, path) in current.items():
        if key not in snapshot and value._trace is not None:
            created.append(path)
            if isinstance(obj, dict):
                del obj[name]
            else:
                delattr(obj, name)
    return created


def _is_state_holder(obj) -> bool:
    """Objects whose attributes may hold tensors: instances of user or needle classes
    (modules, optimizers, training jobs), not modules, functions, classes or arrays."""
    if isinstance(obj, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type,
                        np.ndarray, str, bytes, autograd.Value)):
        return False
    return hasattr(obj, "__dict__") and type(obj).__module__ not in ("builtins", "numpy")


def _take_slot_updates(snapshot: dict) -> list:
    """(holder, key, traced value) for every snapshotted slot the trace reassigned; each
    slot gets its old tensor back (the compiled call writes the new value after running)."""
    updates = []
    for obj, key, old, _ in snapshot.values():
        current = obj[key] if isinstance(obj, dict) else getattr(obj, key, None)
        if current is not old and isinstance(current, autograd.Value) and current._trace is not None:
            updates.append((obj, key, current))
            if isinstance(obj, dict):
                obj[key] = old
            else:
                setattr(obj, key, old)
    return updates


def _signature_text(key: tuple) -> str:
    """A short readable form of a cache key: the argument types."""
    args = []
    for a in key[0]:
        if a[0] == "Tensor":
            args.append(f"{a[2]}[{','.join(map(str, a[1]))}]")
        elif a[0] == "Module":
            args.append("module")
        else:
            args.append(repr(a[1]))
    return "(" + ", ".join(args) + ")"


def _diff(old, new, path="signature"):
    if isinstance(old, tuple) and isinstance(new, tuple) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from _diff(a, b, f"{path}[{i}]")
    elif old != new:
        yield path, old, new


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
        value.backward()
        grads = [args[i].grad if args[i].grad is not None else init.zeros_like(args[i]) for i in nums]
        return value, (grads[0] if isinstance(argnums, int) else tuple(grads))

    return wrapped


def grad(f: Callable, argnums=0) -> Callable:
    """JAX-style: a function returning the gradient(s) of f w.r.t. args[argnums]."""
    vg = value_and_grad(f, argnums)
    return lambda *args: vg(*args)[1]
