"""MCJIT compilation of kernels at O3 for the host CPU, and the in-memory kernel cache.

`compile_kernel(subgraph)` lowers a kernel subgraph to loop IR, renders its canonical C
text, and returns the cached `Kernel` when that text (plus target and options) was compiled
before; otherwise it renders LLVM IR, optimises it for the host CPU (its name and
features, e.g. AVX2/FMA or AVX-512) and JIT-compiles it with MCJIT.

Compiled object code is also cached on disk under `NEEDLE_CACHE_DIR` (default
`$XDG_CACHE_HOME/needle`, i.e. `~/.cache/needle`; `NEEDLE_CACHE_DIR=""` or `0` disables it)
through MCJIT's object cache. A warm disk entry skips both the O3 passes and codegen; the
optimised IR is then only rebuilt when asked for (`Kernel.llvm_ir_optimized`). Entries go
through `needle.cache` (atomic writes, a keyed MAC over the entry's name and bytes, safe
reads, LRU eviction): anything that fails the check is ignored, recompiled and overwritten.
The in-memory cache keeps the `MEMORY_CACHE_SIZE` most recently used kernels.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import threading
from collections import OrderedDict

import numpy as np
import llvmlite
import llvmlite.binding as llvm

from ..cache import cache_dir, code_fingerprint, read_entry, write_entry
from ..ir.graph import Graph
from .c_render import render_c
from .llvm_render import VECTOR_WIDTH, WIDE_WIDTH, range_extent, render_llvm
from .loop_ir import LoopKernel
from .lower import lower

_LOCK = threading.Lock()
_TM = None
#: how many kernels the in-memory cache keeps (least recently used dropped first)
MEMORY_CACHE_SIZE = 1024
_CACHE: OrderedDict = OrderedDict()
STATS = {"hits": 0, "misses": 0, "disk_hits": 0, "disk_misses": 0}
OPT_OPTIONS = "speed_level=3;loop_vectorization;slp_vectorization;opt=3;codemodel=jitdefault"
#: bumped when the renderer's output for the same kernel text changes (entry points, ABI)
RENDER_VERSION = 3


def _new_target_machine():
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(),
                                        opt=3, codemodel="jitdefault")


def target_machine():
    """The shared host target machine (for passes, keys and assembly; engines get their own,
    since an MCJIT engine takes ownership of its target machine and frees it with itself)."""
    global _TM
    if _TM is None:
        _TM = _new_target_machine()
    return _TM


@functools.lru_cache(maxsize=None)
def wide_width() -> int:
    """The lanes of vector loops whose extent allows: WIDE_WIDTH where the host has AVX-512."""
    return WIDE_WIDTH if llvm.get_host_cpu_features().get("avx512f", False) else VECTOR_WIDTH


def target_key() -> str:
    tm = target_machine()
    return f"{llvm.get_process_triple()};{llvm.get_host_cpu_name()};{tm.feature_string if hasattr(tm, 'feature_string') else llvm.get_host_cpu_features().flatten()};llvmlite {llvmlite.__version__};w{VECTOR_WIDTH}/{wide_width()}"


def disk_key(c_source: str) -> str:
    """sha256 over everything that determines the object code."""
    from .. import __version__ as needle_version
    tm = target_machine()
    parts = [c_source, llvm.get_process_triple(), tm.triple, llvm.get_host_cpu_name(),
             llvm.get_host_cpu_features().flatten(), f"llvmlite {llvmlite.__version__}",
             "llvm " + ".".join(map(str, llvm.llvm_version_info)), f"needle {needle_version}",
             OPT_OPTIONS, f"w{VECTOR_WIDTH}/{wide_width()}", f"render {RENDER_VERSION}", code_fingerprint()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def entry_name(key: str) -> str:
    """The disk cache entry (`needle.cache`) of the object code with disk key `key`."""
    return f"kernels/{key[:2]}/{key}.o"


#: the range entry's C type: void (void** args, int64 lo, int64 hi)
_RANGE_FN = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64, ctypes.c_int64)


class _Address(int):
    """A function address that keeps its kernel (and so its code) alive while referenced: the
    native executor records bare addresses, and the in-memory cache may drop the kernel."""

    def __new__(cls, address: int, kernel: "Kernel"):
        self = super().__new__(cls, address)
        self.kernel = kernel
        return self


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
        self._named = LoopKernel(self.name, loop.params, loop.body)
        self._llvm_ir = None
        self._llvm_ir_optimized = None
        d = cache_dir()
        self.disk_key = disk_key(c_source) if d is not None else None
        entry = entry_name(self.disk_key) if d is not None else None
        cached = read_entry(entry) if d is not None else None
        self.from_disk = cached is not None
        tm = target_machine()
        if cached is None:
            mod = llvm.parse_assembly(self.llvm_ir)
            mod.verify()
            _optimize(mod)
            self._llvm_ir_optimized = str(mod)
        else:  # the object on disk is the whole kernel: no IR to render, parse or optimise
            mod = llvm.parse_assembly("")
            mod.triple = tm.triple
            mod.data_layout = str(tm.target_data)
        if d is not None:
            STATS["disk_hits" if cached is not None else "disk_misses"] += 1
        self._engine = llvm.create_mcjit_compiler(mod, _new_target_machine())
        if d is not None:
            def notify(_module, buf):
                write_entry(entry, bytes(buf))

            def getbuffer(_module):
                return cached

            self._engine.set_object_cache(notify, getbuffer)
        self._engine.finalize_object()
        addr = self._engine.get_function_address(self.name)
        #: `void name_range(void** args, int64 lo, int64 hi)`: iterations [lo, hi) of the
        #: kernel's top-level loop (of `range_extent`; 1 = not splittable), for the native executor
        self.range_address = _Address(self._engine.get_function_address(self.name + "_range"), self)
        if not addr or not self.range_address:
            raise RuntimeError(f"kernel {self.name}: entry points missing from its compiled object"
                               + (f" (disk cache entry {entry})" if self.from_disk else ""))
        self.range_extent = range_extent(loop)
        # Python calls go through the range entry too: its arguments are one array, where a
        # ctypes call of the plain entry takes at most 1,024 (a stack of 1,500 pieces has more)
        self._range = _RANGE_FN(self.range_address)
        self._n_args = len(loop.params)
        self._args_type = ctypes.c_void_p * max(self._n_args, 1)
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
        self.launch([x.ctypes.data for x in ins + outs])
        return outs

    def launch(self, addresses) -> None:
        """Run on raw buffer addresses (inputs then outputs, compact float32, sizes as
        `self.inputs`/`self.outputs` say): the executor's path, with no copies."""
        if len(addresses) != self._n_args:
            raise ValueError(f"kernel {self.name} takes {self._n_args} buffers, got {len(addresses)}")
        self._range(self._args_type(*addresses), 0, self.range_extent)

    @property
    def llvm_ir(self) -> str:
        """The kernel's LLVM IR module as rendered (before optimisation)."""
        if self._llvm_ir is None:
            module = render_llvm(self._named, wide=wide_width())
            tm = target_machine()
            module.triple = tm.triple
            module.data_layout = str(tm.target_data)
            self._llvm_ir = str(module)
        return self._llvm_ir

    @property
    def llvm_ir_optimized(self) -> str:
        if self._llvm_ir_optimized is None:  # loaded from disk: rebuild on demand
            mod = llvm.parse_assembly(self.llvm_ir)
            _optimize(mod)
            self._llvm_ir_optimized = str(mod)
        return self._llvm_ir_optimized

    def asm(self) -> str:
        return target_machine().emit_assembly(llvm.parse_assembly(self.llvm_ir_optimized))


def compile_loop_kernel(loop: LoopKernel) -> Kernel:
    c_source = render_c(LoopKernel("kernel", loop.params, loop.body))
    key = c_source + "\n// target: " + target_key()
    with _LOCK:
        k = _CACHE.get(key)
        if k is not None:
            STATS["hits"] += 1
            _CACHE.move_to_end(key)
            return k
        STATS["misses"] += 1
        k = Kernel(loop, c_source, key)
        _CACHE[key] = k
        if len(_CACHE) > MEMORY_CACHE_SIZE:
            _CACHE.popitem(last=False)
        return k


def compile_kernel(subgraph: Graph) -> Kernel:
    """Lower, render and JIT a kernel subgraph (cached by its canonical kernel text)."""
    return compile_loop_kernel(lower(subgraph))


def clear_memory_cache():
    """Forget in-memory kernels (the disk cache stays)."""
    with _LOCK:
        _CACHE.clear()


clear_cache = clear_memory_cache
