"""MCJIT compilation of kernels at O3 for the host CPU, and the in-memory kernel cache.

`compile_kernel(subgraph)` lowers a kernel subgraph to loop IR, renders its canonical C
text, and returns the cached `Kernel` when that text (plus target and options) was compiled
before; otherwise it renders LLVM IR, optimises it for the host CPU (its name and
features, e.g. AVX2/FMA or AVX-512) and JIT-compiles it with MCJIT.
"""
from __future__ import annotations

import ctypes
import hashlib
import threading

import numpy as np
import llvmlite
import llvmlite.binding as llvm

from ..ir.graph import Graph
from .c_render import render_c
from .llvm_render import VECTOR_WIDTH, render_llvm
from .loop_ir import LoopKernel
from .lower import lower

_LOCK = threading.Lock()
_TM = None
_CACHE: dict = {}
STATS = {"hits": 0, "misses": 0}


def target_machine():
    global _TM
    if _TM is None:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        _TM = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                           features=llvm.get_host_cpu_features().flatten(),
                                           opt=3, codemodel="jitdefault")
    return _TM


def target_key() -> str:
    tm = target_machine()
    return f"{llvm.get_process_triple()};{llvm.get_host_cpu_name()};{tm.feature_string if hasattr(tm, 'feature_string') else llvm.get_host_cpu_features().flatten()};llvmlite {llvmlite.__version__};w{VECTOR_WIDTH}"


def _optimize(mod):
    tm = target_machine()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


class Kernel:
    """A compiled kernel: call it with numpy float32 arrays, get the output arrays."""

    def __init__(self, loop: LoopKernel, c_source: str, key: str):
        self.loop = loop
        self.c_source = c_source
        self.key = key
        self.name = "nk_" + hashlib.sha256(key.encode()).hexdigest()[:16]
        loop = LoopKernel(self.name, loop.params, loop.body)
        module = render_llvm(loop)
        tm = target_machine()
        module.triple = tm.triple
        module.data_layout = str(tm.target_data)
        self.llvm_ir = str(module)
        mod = llvm.parse_assembly(self.llvm_ir)
        mod.verify()
        _optimize(mod)
        self.llvm_ir_optimized = str(mod)
        self._engine = llvm.create_mcjit_compiler(mod, tm)
        self._engine.finalize_object()
        addr = self._engine.get_function_address(self.name)
        n = len(loop.params)
        self._fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * n))(addr)
        self.inputs = loop.inputs
        self.outputs = loop.outputs

    def __call__(self, *arrays) -> list:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"kernel takes {len(self.inputs)} inputs, got {len(arrays)}")
        ins = []
        for a, p in zip(arrays, self.inputs):
            a = np.ascontiguousarray(a, dtype=np.float32)
            if a.size != p.size:
                raise ValueError(f"input {p.name}: expected shape {p.shape}, got {a.shape}")
            ins.append(a)
        outs = [np.empty(p.shape, dtype=np.float32) for p in self.outputs]
        self._fn(*[x.ctypes.data for x in ins + outs])
        return outs

    def launch(self, addresses) -> None:
        """Run on raw buffer addresses (inputs then outputs, compact float32, sizes as
        `self.inputs`/`self.outputs` say): the executor's path, with no copies."""
        self._fn(*addresses)

    def asm(self) -> str:
        return target_machine().emit_assembly(llvm.parse_assembly(self.llvm_ir_optimized))


def compile_loop_kernel(loop: LoopKernel) -> Kernel:
    c_source = render_c(LoopKernel("kernel", loop.params, loop.body))
    key = c_source + "\n// target: " + target_key()
    with _LOCK:
        k = _CACHE.get(key)
        if k is not None:
            STATS["hits"] += 1
            return k
        STATS["misses"] += 1
        k = Kernel(loop, c_source, key)
        _CACHE[key] = k
        return k


def compile_kernel(subgraph: Graph) -> Kernel:
    """Lower, render and JIT a kernel subgraph (cached by its canonical kernel text)."""
    return compile_loop_kernel(lower(subgraph))


def clear_cache():
    with _LOCK:
        _CACHE.clear()
