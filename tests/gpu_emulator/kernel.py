"""Run GPU kernels (`gpu_ir.GpuKernel`) and whole CUDA programs on the CPU with numpy.

This is how the CUDA code generator is tested on machines without a GPU. The emulation is
the one a CPU OpenCL implementation does: grid and block loops become plain loops, and the
code between two `__syncthreads()` barriers runs as one loop over the block's threads
(loop fission). Here that loop is vectorised with numpy: every statement runs for all
threads of a chunk of blocks at once (one array lane per thread), so a barrier is simply
the boundary between two such statements. Because vectorised lanes never interleave the way
sequential loop-fission order would, the emulator does not rely on an order to expose a
missing barrier: it checks for one.

What it checks (an `EmulationError` names the kernel, the statement and a lane):

* every global load and store of an active thread is inside its buffer (per argument, not
  per arena: a read past a buffer's end into its neighbour is an error);
* shared memory: reads of never-written slots; a slot read by one thread and written by
  another, or written by two threads, between the same two barriers (a missing barrier);
* a barrier reached by only part of a block, and warp shuffles executed by only part of
  a warp (both undefined on a GPU);
* global memory: two threads storing the same element in one launch; a thread reading an
  element another thread of the same launch stores (checked for arguments whose memory
  overlaps, e.g. in-place outputs);
* launch limits: 1024 threads per block, grid y/z below 65536, 48 KiB of static shared
  memory, shuffles in blocks whose size is a multiple of 32.

Inactive lanes (threads outside an `if`, e.g. past the end of a partial block) never load
or store. Arena and outputs start filled with NaN, so reading anything no kernel wrote
shows up in the results. Warp shuffles read from the warp's lane array (lanes are grouped
by 32 in the block's linear thread order). Atomic adds accumulate in lane order.
"""
from __future__ import annotations

from math import prod

import numpy as np

from ..loop_ir import AccInit, AccRef, AccUpdate, Binary, Cmp, FConst, IBin, IConst, IVar, Load, Select, Store, Unary
from .gpu_ir import (ACC_IDENTITY, AtomicAdd, Assign, Barrier, Decl, GpuKernel, IAnd, ICmp, IDecl, IFloat, If, IOr,
                     Loop, MicroGemm, Rand, SLoad, SStore, Shfl, TileDecl, TileRef, Var)

#: lanes emulated at once (blocks are processed in chunks of about this many threads)
MAX_LANES = 1 << 17
SHARED_LIMIT = 48 * 1024


class EmulationError(AssertionError):
    """A kernel did something undefined on a GPU (see the module docstring)."""


class _Buffer:
    __slots__ = ("name", "data", "region", "start", "size", "role", "track_loads")

    def __init__(self, name, data, region, start, size, role):
        self.name, self.data, self.region, self.start, self.size, self.role = name, data, region, start, size, role
        self.track_loads = False


_U64 = np.uint64


def _splitmix64(x):
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def uniform(counter, base, stream, index):
    """The compiled RNG's floats (as `RandomUniform.compute` and the CUDA helper)."""
    counter = np.asarray(counter, np.float32)
    base = np.asarray(base, np.float32)
    with np.errstate(over="ignore"):
        c = np.rint(counter).astype(np.int64).astype(np.uint64)
        b = np.rint(base).astype(np.int64).astype(np.uint64)
        seed = _splitmix64(b) + c * _U64(0x9E3779B97F4A7C15)
        key = _splitmix64(seed + _U64(stream))
        bits = _splitmix64(np.asarray(index, np.int64).astype(np.uint64) + key)
    return (bits >> _U64(40)).astype(np.float32) / np.float32(1 << 24)


def _cdiv(a, b):
    """C's integer division (truncation toward zero)."""
    if isinstance(b, (int, np.integer)) and b > 0:
        if np.ndim(a) == 0:
            return a // b if a >= 0 else -((-a) // b)
        q = a // b
        neg = a < 0
        if neg.any():
            q = np.where(neg, -((-a) // b), q)
        return q
    q = np.floor_divide(a, b)
    fix = (np.mod(a, b) != 0) & ((np.asarray(a) < 0) != (np.asarray(b) < 0))
    return np.where(fix, q + 1, q)


def _cmod(a, b):
    return a - b * _cdiv(a, b)


_CMP = {"eq": np.equal, "ne": np.not_equal, "gt": np.greater, "ge": np.greater_equal, "lt": np.less,
        "le": np.less_equal}


class KernelRun:
    """One launch of a kernel over all its blocks, chunk by chunk."""

    def __init__(self, kernel: GpuKernel, buffers: dict, consts: dict, checks: bool = True):
        self.k = kernel
        self.bufs = buffers
        self.consts = consts
        self.checks = checks
        self.stores: list = []   # (region, absolute index array, global thread id array)
        self.loads: list = []
        T = kernel.threads
        if T > 1024 or T < 1:
            raise EmulationError(f"{kernel.name}: {T} threads per block (1..1024)")
        if kernel.grid[1] > 65535 or kernel.grid[2] > 65535 or kernel.grid[0] > 2 ** 31 - 1:
            raise EmulationError(f"{kernel.name}: grid {kernel.grid} exceeds CUDA's limits")
        if sum(s.size for s in kernel.shared) * 4 > SHARED_LIMIT:
            raise EmulationError(f"{kernel.name}: {sum(s.size for s in kernel.shared) * 4} bytes of shared memory")

    # ---- driver ----------------------------------------------------------------------
    def run(self):
        k = self.k
        T = k.threads
        nblocks = k.blocks
        per = max(1, MAX_LANES // T)
        for b0 in range(0, nblocks, per):
            nb = min(per, nblocks - b0)
            self._chunk(b0, nb)
        if self.checks:
            self._check_global()

    def _chunk(self, b0, nb):
        k = self.k
        T = k.threads
        L = nb * T
        self.L, self.nb, self.T = L, nb, T
        lane = np.arange(L, dtype=np.int64)
        t = lane % T
        blk_local = lane // T
        blk = blk_local + b0
        gx, gy, _ = k.grid
        bdx, bdy, _ = k.block
        self.t = t
        self.blk_local = blk_local
        self.gtid = blk * T + t
        self.iv = {"tx": t % bdx, "ty": (t // bdx) % bdy, "bx": blk % gx, "by": (blk // gx) % gy,
                   "bz": blk // (gx * gy)}
        self.fv: dict = {}
        self.shared = {s.name: np.zeros((nb, max(s.size, 1)), np.float32) for s in k.shared}
        self.sinit = {s.name: np.zeros((nb, max(s.size, 1)), bool) for s in k.shared}
        self.swriter = {s.name: np.full((nb, max(s.size, 1)), -1, np.int64) for s in k.shared}
        self.sreads: dict = {s.name: [] for s in k.shared}
        self.sdirty = {s.name: False for s in k.shared}   # written since the last barrier
        with np.errstate(all="ignore"):
            self.block(k.body, None)

    # ---- statements ------------------------------------------------------------------
    def block(self, body, mask):
        for s in body:
            self.stmt(s, mask)

    def _active(self, mask):
        return mask is None or bool(mask.any())

    def stmt(self, s, mask):
        if isinstance(s, Store):
            if not self._active(mask):
                return
            memo = {}
            idx = self.index(s.index, mask, memo)
            val = self.value(s.value, mask, memo)
            self._store(s.buf, idx, val, mask, s)
        elif isinstance(s, AccInit):
            self._set(s.acc, np.float32(ACC_IDENTITY[s.op]), mask)
        elif isinstance(s, AccUpdate):
            if not self._active(mask):
                return
            v = self.value(s.value, mask, {})
            old = self.fv[s.acc]
            new = old + v if s.op == "sum" else _max_nan(old, v)
            self._set(s.acc, new, mask)
        elif isinstance(s, Decl):
            v = self.value(s.value, mask, {}) if self._active(mask) else np.float32(np.nan)
            if mask is None or s.var not in self.fv:
                self.fv[s.var] = self._full(v, mask)
            else:
                self._set(s.var, v, mask)
        elif isinstance(s, Assign):
            if not self._active(mask):
                return
            self._set(s.var, self.value(s.value, mask, {}), mask)
        elif isinstance(s, IDecl):
            self.iv[s.var] = self.index(s.value, mask, {})
        elif isinstance(s, Loop):
            for v in range(s.extent):
                self.iv[s.var] = v
                self.block(s.body, mask)
        elif isinstance(s, If):
            c = self.index(s.cond, mask, {})
            c = np.broadcast_to(np.asarray(c, bool), (self.L,))
            m1 = c if mask is None else (mask & c)
            self.block(s.body, m1)
            if s.orelse:
                m2 = ~c if mask is None else (mask & ~c)
                self.block(s.orelse, m2)
        elif isinstance(s, SStore):
            if not self._active(mask):
                return
            memo = {}
            idx = self.index(s.index, mask, memo)
            val = self.value(s.value, mask, memo)
            self._sstore(s.array, idx, val, mask, s)
        elif isinstance(s, Barrier):
            self._barrier(mask, s)
        elif isinstance(s, TileDecl):
            self.fv[s.name] = np.zeros((self.L, s.rows, s.cols), np.float32)
        elif isinstance(s, MicroGemm):
            self._micro_gemm(s, mask)
        elif isinstance(s, Shfl):
            self._shfl(s, mask)
        elif isinstance(s, AtomicAdd):
            if not self._active(mask):
                return
            memo = {}
            idx = self.index(s.index, mask, memo)
            val = self.value(s.value, mask, memo)
            buf = self._buf(s.buf, s)
            idx, val = self._lanes(idx, mask), self._lanes(val, mask)
            self._bounds(buf, idx, s, "atomicAdd")
            np.add.at(buf.data, idx, val.astype(np.float32))
        else:
            raise EmulationError(f"{self.k.name}: unknown statement {s!r}")

    def _full(self, v, mask):
        arr = np.empty(self.L, np.float32)
        arr[:] = v
        if mask is not None:
            arr[~mask] = np.nan
        return arr

    def _set(self, name, v, mask):
        if mask is None:
            arr = np.empty(self.L, np.float32)
            arr[:] = v
            self.fv[name] = arr
        else:
            old = self.fv.get(name)
            if old is None:
                old = np.full(self.L, np.nan, np.float32)
            self.fv[name] = np.where(mask, v, old).astype(np.float32, copy=False)

    def _lanes(self, x, mask):
        x = np.broadcast_to(x, (self.L,))
        return x if mask is None else x[mask]

    def _buf(self, name, s):
        b = self.bufs.get(name)
        if b is None:
            c = self.consts.get(name)
            if c is None:
                raise EmulationError(f"{self.k.name}: {s!r} names unknown buffer {name!r}")
            return _Buffer(name, c, ("const", name), 0, c.size, "in")
        return b

    def _bounds(self, buf, idx, s, what):
        if idx.size and (idx.min() < 0 or idx.max() >= buf.size):
            bad = int(idx[(idx < 0) | (idx >= buf.size)][0])
            raise EmulationError(f"{self.k.name}: {what} {buf.name}[{bad}] out of bounds (size {buf.size}) in {s!r}"[:2000])

    def _store(self, name, idx, val, mask, s):
        buf = self._buf(name, s)
        if buf.role == "in":
            raise EmulationError(f"{self.k.name}: store to input buffer {name}")
        idx = self._lanes(np.asarray(idx, np.int64), mask)
        val = self._lanes(np.asarray(val, np.float32), mask)
        self._bounds(buf, idx, s, "store")
        buf.data[idx] = val
        if self.checks:
            gt = self._lanes(self.gtid, mask)
            self.stores.append((buf.region, idx + buf.start, gt, name))

    def _load(self, e, mask, memo):
        buf = self._buf(e.buf, e)
        idx = np.asarray(self.index(e.index, mask, memo), np.int64)
        if idx.ndim == 0:
            if mask is not None and not mask.any():
                return np.float32(0)
            i = int(idx)
            if not 0 <= i < buf.size:
                raise EmulationError(f"{self.k.name}: load {buf.name}[{i}] out of bounds (size {buf.size})")
            if buf.track_loads and self.checks:
                lanes = self.gtid if mask is None else self.gtid[mask]
                self.loads.append((buf.region, np.full(lanes.size, i + buf.start), lanes, buf.name))
            return buf.data[i]
        if mask is not None:
            act = idx[mask]
            self._bounds(buf, act, e, "load")
            out = np.zeros(self.L, np.float32)
            out[mask] = buf.data[act]
            if buf.track_loads and self.checks:
                self.loads.append((buf.region, act + buf.start, self.gtid[mask], buf.name))
            return out
        self._bounds(buf, idx, e, "load")
        if buf.track_loads and self.checks:
            self.loads.append((buf.region, idx + buf.start, self.gtid, buf.name))
        return buf.data[idx]

    # ---- shared memory ---------------------------------------------------------------
    def _slot(self, name, idx, mask, s):
        size = self.shared[name].shape[1]
        idx = np.broadcast_to(np.asarray(idx, np.int64), (self.L,))
        lb, t = self.blk_local, self.t
        if mask is not None:
            idx, lb, t = idx[mask], lb[mask], t[mask]
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise EmulationError(f"{self.k.name}: shared {name}[{int(idx.max())}] out of bounds (size {size}) in {s!r}")
        return lb, idx, t

    def _sstore(self, name, idx, val, mask, s):
        lb, i, t = self._slot(name, idx, mask, s)
        val = self._lanes(np.asarray(val, np.float32), mask)
        if self.checks:
            w = self.swriter[name]
            prev = w[lb, i]
            if np.any((prev != -1) & (prev != t)):
                raise EmulationError(f"{self.k.name}: shared {name}: two threads write one slot between "
                                     f"barriers (missing __syncthreads) at {s!r}")
            w[lb, i] = t
            if np.any(w[lb, i] != t):
                raise EmulationError(f"{self.k.name}: shared {name}: threads of one statement write the "
                                     f"same slot at {s!r}")
            self.sdirty[name] = True
            for item in self.sreads[name]:
                rb, ri, rt = item() if callable(item) else item
                size = self.shared[name].shape[1]
                rk = rb * size + ri
                wk = lb * size + i
                hit = np.isin(rk, wk)
                if hit.any():
                    owner = np.full(self.nb * size, -1, np.int64)
                    owner[wk] = t
                    if np.any(owner[rk[hit]] != rt[hit]):
                        raise EmulationError(f"{self.k.name}: shared {name}: a slot read by one thread is "
                                             f"written by another between barriers (missing __syncthreads) "
                                             f"at {s!r}")
        self.shared[name][lb, i] = val
        self.sinit[name][lb, i] = True

    def _sload(self, e, mask, memo):
        idx = self.index(e.index, mask, memo)
        lb, i, t = self._slot(e.array, idx, mask, e)
        if self.checks:
            init = self.sinit[e.array]
            if not init.all() and not init[lb, i].all():
                raise EmulationError(f"{self.k.name}: shared {e.array} read before any write at {e!r}")
            w = self.swriter[e.array][lb, i] if self.sdirty[e.array] else None
            if w is not None and np.any((w != -1) & (w != t)):
                raise EmulationError(f"{self.k.name}: shared {e.array}: thread reads a slot another thread "
                                     f"wrote since the last barrier (missing __syncthreads) at {e!r}")
            self.sreads[e.array].append((lb, i, t))
        vals = self.shared[e.array][lb, i]
        if mask is None:
            return vals
        out = np.zeros(self.L, np.float32)
        out[mask] = vals
        return out

    def _tile_operand(self, array, index, outer, n, depth, mask, s):
        """Shared-memory values read by a MicroGemm operand: shape (lanes, depth, n)."""
        saved = self.iv  # evaluate once for all (lane, kk, j): lanes on axis 0, kk on 1, j on 2
        iv = {k: (v.reshape(-1, 1, 1) if isinstance(v, np.ndarray) and v.ndim == 1 else v) for k, v in saved.items()}
        iv["kk"] = np.arange(depth).reshape(1, depth, 1)
        iv[outer] = np.arange(n).reshape(1, 1, n)
        self.iv = iv
        try:
            idx = np.broadcast_to(np.asarray(self.index(index, None, {}), np.int64), (self.L, depth, n))
        finally:
            self.iv = saved
        size = self.shared[array].shape[1]
        if idx.min() < 0 or idx.max() >= size:
            raise EmulationError(f"{self.k.name}: shared {array} index out of bounds in {s!r}"[:2000])
        lb = self.blk_local[:, None, None]
        if self.checks:
            init = self.sinit[array]
            if not init.all() and not init[lb, idx].all():
                raise EmulationError(f"{self.k.name}: MicroGemm reads shared {array} before any write")
            if self.sdirty[array]:
                w = self.swriter[array][lb, idx]
                if np.any((w != -1) & (w != self.t[:, None, None])):
                    raise EmulationError(f"{self.k.name}: MicroGemm reads shared {array} written by another "
                                         f"thread since the last barrier (missing __syncthreads)")
            blk, t = self.blk_local, self.t

            def reads(idx=idx, blk=blk, t=t):
                flat_i = idx.reshape(idx.shape[0], -1)
                return (np.repeat(blk, flat_i.shape[1]), flat_i.reshape(-1), np.repeat(t, flat_i.shape[1]))
            self.sreads[array].append(reads)
        return self.shared[array][lb, idx]

    def _micro_gemm(self, s, mask):
        if mask is not None and not mask.all():
            raise EmulationError(f"{self.k.name}: MicroGemm under a condition (it runs on every thread)")
        a = self._tile_operand(s.a_array, s.a_index, "mi", s.rows, s.depth, mask, s)
        b = self._tile_operand(s.b_array, s.b_index, "nj", s.cols, s.depth, mask, s)
        acc = self.fv[s.acc]
        for kk in range(s.depth):  # in order, like the unrolled fmaf chain
            acc += a[:, kk, :, None] * b[:, kk, None, :]
        for v in ("kk", "mi", "nj"):
            self.iv.pop(v, None)

    def _barrier(self, mask, s):
        if mask is not None:
            per_block = mask.reshape(self.nb, self.T)
            some, every = per_block.any(axis=1), per_block.all(axis=1)
            if np.any(some & ~every):
                raise EmulationError(f"{self.k.name}: __syncthreads() reached by part of a block")
        for name in self.swriter:
            if self.sdirty[name]:
                self.swriter[name].fill(-1)
            self.sdirty[name] = False
            self.sreads[name] = []

    def _shfl(self, s, mask):
        T = self.T
        if T % 32:
            raise EmulationError(f"{self.k.name}: warp shuffle in a block of {T} threads (not a multiple of 32)")
        if mask is not None:
            per_warp = mask.reshape(-1, 32)
            if np.any(per_warp.any(axis=1) & ~per_warp.all(axis=1)):
                raise EmulationError(f"{self.k.name}: warp shuffle executed by part of a warp")
        src = np.broadcast_to(self.fv[s.src], (self.L,)).reshape(-1, 32)
        if s.mode == "down":
            out = src.copy()
            if s.offset < 32:
                out[:, :32 - s.offset] = src[:, s.offset:]
        else:
            out = np.repeat(src[:, s.offset % 32:s.offset % 32 + 1], 32, axis=1)
        self._set(s.dst, out.reshape(-1), mask)

    # ---- expressions -----------------------------------------------------------------
    def index(self, e, mask, memo):
        hit = _ICACHE.get(id(e))
        if hit is None or hit[0] is not e:
            hit = _ICACHE[id(e)] = (e, _compile_index(e))
        fn = hit[1]
        if fn is not None:
            try:
                return fn(self.iv)
            except KeyError as err:
                raise EmulationError(f"{self.k.name}: index variable {err} is not defined") from None
        return self._index(e, mask, memo)

    def _index(self, e, mask, memo):
        if isinstance(e, IConst):
            return e.value
        if isinstance(e, IVar):
            v = self.iv.get(e.name)
            if v is None:
                raise EmulationError(f"{self.k.name}: index variable {e.name} is not defined")
            return v
        if isinstance(e, IBin):
            a, b = self.index(e.a, mask, memo), self.index(e.b, mask, memo)
            if e.op == "add":
                return a + b
            if e.op == "mul":
                return a * b
            if e.op == "div":
                return _cdiv(a, b)
            return _cmod(a, b)
        if isinstance(e, ICmp):
            return _CMP[e.op](self.index(e.a, mask, memo), self.index(e.b, mask, memo))
        if isinstance(e, IAnd):
            return np.logical_and(self.index(e.a, mask, memo), self.index(e.b, mask, memo))
        if isinstance(e, IOr):
            return np.logical_or(self.index(e.a, mask, memo), self.index(e.b, mask, memo))
        if isinstance(e, IFloat):
            v = self.value(e.value, mask, memo)
            if e.bound:
                v = np.asarray(v, np.float64)
                inside = (v >= 0) & (v < e.bound)
                return np.where(inside, np.trunc(np.where(inside, v, 0)), 0).astype(np.int64)
            act = self._lanes(v, mask)
            if act.size and not np.all(np.isfinite(act)):
                raise EmulationError(f"{self.k.name}: non-finite float used as an index in {e!r}")
            return np.trunc(np.asarray(v, np.float64)).astype(np.int64) if mask is None else \
                np.where(mask, np.trunc(np.nan_to_num(np.asarray(v, np.float64))), 0).astype(np.int64)
        raise EmulationError(f"{self.k.name}: unknown index expression {e!r}")

    def value(self, e, mask, memo):
        key = id(e)
        hit = memo.get(key)
        if hit is not None:
            return hit
        out = self._value(e, mask, memo)
        memo[key] = out
        return out

    def _value(self, e, mask, memo):
        if isinstance(e, FConst):
            return np.float32(e.value)
        if isinstance(e, Load):
            return self._load(e, mask, memo)
        if isinstance(e, SLoad):
            return self._sload(e, mask, memo)
        if isinstance(e, AccRef):
            return self.fv[e.acc]
        if isinstance(e, TileRef):
            return self.fv[e.name][:, e.row, e.col]
        if isinstance(e, Var):
            if e.name not in self.fv:
                raise EmulationError(f"{self.k.name}: float variable {e.name} read before it is declared")
            return self.fv[e.name]
        if isinstance(e, Unary):
            a = np.asarray(self.value(e.a, mask, memo), np.float32)
            if e.op == "neg":
                return -a
            return getattr(np, e.op)(a).astype(np.float32)
        if isinstance(e, Binary):
            a = np.asarray(self.value(e.a, mask, memo), np.float32)
            b = np.asarray(self.value(e.b, mask, memo), np.float32)
            if e.op == "add":
                return a + b
            if e.op == "sub":
                return a - b
            if e.op == "mul":
                return a * b
            if e.op == "div":
                return a / b
            if e.op == "pow":
                return np.power(a, b).astype(np.float32)
            if e.op == "max_nan":
                return _max_nan(a, b)
            raise EmulationError(f"unknown binary op {e.op}")
        if isinstance(e, Cmp):
            return _CMP[e.op](self.value(e.a, mask, memo), self.value(e.b, mask, memo))
        if isinstance(e, Select):
            if isinstance(e.cond, Cmp):
                c = self.value(e.cond, mask, memo)
            else:
                c = self.index(e.cond, mask, memo)
            c = np.broadcast_to(np.asarray(c, bool), (self.L,))
            ma = c if mask is None else (mask & c)
            mb = ~c if mask is None else (mask & ~c)
            # each arm is evaluated only on its lanes (a guarded load never runs out of bounds)
            a = self.value(e.a, ma, {}) if ma.any() else np.float32(0)
            b = self.value(e.b, mb, {}) if mb.any() else np.float32(0)
            return np.where(c, a, b).astype(np.float32)
        if isinstance(e, Rand):
            c = self.value(e.counter, mask, memo)
            b = self.value(e.base, mask, memo)
            idx = self.index(e.index, mask, memo)
            return uniform(c, b, e.stream, idx)
        raise EmulationError(f"{self.k.name}: unknown value expression {e!r}")

    # ---- global races ----------------------------------------------------------------
    def _check_global(self):
        by_region: dict = {}
        for region, addr, tid, name in self.stores:
            by_region.setdefault(region, []).append((addr, tid, name))
        for region, parts in by_region.items():
            addr = np.concatenate([p[0] for p in parts])
            tid = np.concatenate([p[1] for p in parts])
            order = np.lexsort((tid, addr))
            a, t = addr[order], tid[order]
            dup = (a[1:] == a[:-1]) & (t[1:] != t[:-1])
            if dup.any():
                raise EmulationError(f"{self.k.name}: two threads store element {int(a[1:][dup][0])} of "
                                     f"{parts[0][2]} in one launch")
            for lregion, laddr, ltid, lname in self.loads:
                if lregion != region:
                    continue
                pos = np.searchsorted(a, laddr)
                pos = np.minimum(pos, a.size - 1)
                hit = a[pos] == laddr
                if np.any(hit & (t[pos] != ltid)):
                    raise EmulationError(f"{self.k.name}: a thread reads an element of {lname} that another "
                                         f"thread of the same launch writes")


_ICACHE: dict = {}


def _compile_index(e):
    """A Python closure evaluating a pure index expression (no float reads) on the index
    variables, or None (evaluated by walking the tree)."""
    if isinstance(e, IConst):
        v = e.value
        return lambda iv: v
    if isinstance(e, IVar):
        name = e.name
        return lambda iv: iv[name]
    if isinstance(e, (IBin, ICmp, IAnd, IOr)):
        fa, fb = _compile_index(e.a), _compile_index(e.b)
        if fa is None or fb is None:
            return None
        if isinstance(e, IAnd):
            return lambda iv: np.logical_and(fa(iv), fb(iv))
        if isinstance(e, IOr):
            return lambda iv: np.logical_or(fa(iv), fb(iv))
        if isinstance(e, ICmp):
            cmp = _CMP[e.op]
            return lambda iv: cmp(fa(iv), fb(iv))
        if e.op == "add":
            return lambda iv: fa(iv) + fb(iv)
        if e.op == "mul":
            return lambda iv: fa(iv) * fb(iv)
        if e.op == "div":
            return lambda iv: _cdiv(fa(iv), fb(iv))
        return lambda iv: _cmod(fa(iv), fb(iv))
    return None


def _max_nan(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return np.where(np.isnan(a) | (a > b), a, b).astype(np.float32)


def emulate_kernel(kernel: GpuKernel, arrays: dict, consts: dict | None = None, checks: bool = True) -> None:
    """Run `kernel` on numpy float32 arrays bound to its parameter names (flat, modified in
    place for outputs). Each parameter is its own memory region."""
    bufs = {}
    for p in kernel.params:
        a = arrays[p.name]
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise TypeError(f"{p.name}: expected a contiguous float32 array")
        flat = a.reshape(-1)
        if flat.size < p.size:
            raise EmulationError(f"{kernel.name}: argument {p.name} has {flat.size} elements, kernel needs {p.size}")
        bufs[p.name] = _Buffer(p.name, flat, ("param", p.name), 0, p.size, p.role)
    KernelRun(kernel, bufs, {k: v.reshape(-1) for k, v in (consts or {}).items()}, checks).run()


class Memory:
    """The device memory of one program run: arena, inputs, outputs and constants."""

    def __init__(self, program, inputs):
        self.program = program
        self.arena = np.full(program.arena_bytes // 4 + 1, np.nan, np.float32)
        self.inputs = [np.ascontiguousarray(np.asarray(x, np.float32)).reshape(-1).copy() for x in inputs]
        self.outputs = [np.full(max(prod(shape), 1), np.nan, np.float32) for shape in program.outputs]
        self.consts = {k: np.asarray(v, np.float32).reshape(-1) for k, v in program.consts.items()}

    def region(self, loc):
        if loc.space == "arena":
            return ("arena",), self.arena, loc.offset
        if loc.space == "in":
            return ("in", loc.index), self.inputs[loc.index], loc.offset
        if loc.space == "out":
            return ("out", loc.index), self.outputs[loc.index], loc.offset
        raise EmulationError(f"unknown location {loc!r}")


def emulate_program(program, inputs, checks: bool = True, trace=None) -> list:
    """Run every launch of a `CudaProgram` in order on the CPU; returns the outputs as
    float32 numpy arrays of the graph's output shapes. `trace(launch, memory)` is called
    after each launch when given."""
    if len(inputs) != len(program.inputs):
        raise ValueError(f"program {program.name} takes {len(program.inputs)} inputs, got {len(inputs)}")
    for x, shape in zip(inputs, program.inputs):
        if tuple(np.shape(x)) != tuple(shape):
            raise ValueError(f"input of shape {np.shape(x)}, expected {shape}")
    mem = Memory(program, inputs)
    for ln in program.launches:
        k = ln.kernel
        bufs = {}
        spans = []
        for loc, p in zip(ln.args, k.params):
            region, data, off = mem.region(loc)
            if off % 4:
                raise EmulationError(f"{k.name}: argument {p.name} at byte offset {off} (not float aligned)")
            start = off // 4
            if start + p.size > data.size:
                raise EmulationError(f"{k.name}: argument {p.name} [{start}, {start + p.size}) exceeds its "
                                     f"region {region} of {data.size} floats")
            bufs[p.name] = _Buffer(p.name, data[start:start + p.size], region, start, p.size, p.role)
            spans.append((p.name, region, start, start + p.size, p.role))
        for name, region, lo, hi, role in spans:  # arguments overlapping a written one
            for name2, region2, lo2, hi2, role2 in spans:
                if name2 != name and region2 == region and lo < hi2 and lo2 < hi and role2 != "in":
                    bufs[name].track_loads = True
        KernelRun(k, bufs, mem.consts, checks).run()
        if trace is not None:
            trace(ln, mem)
    return [o[:max(prod(shape), 1)].reshape(shape).copy() for o, shape in zip(mem.outputs, program.outputs)]


def reference_values(graph, inputs) -> dict:
    """Every node's value under the reference interpreter (float32 numpy), by node id."""
    from ...backend_selection import BACKEND, array_api
    from ...ops.registry import op_from_node
    from ...runtime.interpreter import const_array

    def to_backend(a):
        return a if BACKEND == "np" else array_api.array(a)

    env: dict = {}
    out: dict = {}
    for node, value in zip(graph.inputs, inputs):
        env[node.id] = to_backend(np.asarray(value, np.float32))
    with np.errstate(all="ignore"):
        for node in graph.nodes:
            if node.op == "input":
                v = env[node.id]
            elif node.op == "const":
                v = env[node.id] = const_array(node)
            else:
                v = env[node.id] = op_from_node(node.op, node.attr_dict).compute(*[env[i] for i in node.inputs])
            if not isinstance(v, tuple):  # copied now: a later kernel may reuse the array
                out[node.id] = np.array(v.numpy() if hasattr(v, "numpy") else v, np.float32)
    return out


def relative_error(a, b) -> float:
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return float("inf")
    fin = np.isfinite(b64)
    if np.any(np.isfinite(a64) != fin) or np.any(np.isnan(a64) != np.isnan(b64)):
        return float("inf")
    return float(np.linalg.norm(a64[fin] - b64[fin]) / max(np.linalg.norm(b64[fin]), 1e-30))


def check_program(program, graph, inputs, tol: float = 1e-5, checks: bool = True) -> list:
    """Emulate `program` and compare, after each group's last launch, every value the
    group writes with the reference interpreter; raise AssertionError at the first value
    off by more than `tol` (normwise relative), naming the group and value. Returns the
    outputs."""
    ref = reference_values(graph, inputs)
    last = {}
    for k, ln in enumerate(program.launches):
        last[ln.group] = k
    position = {k: g for g, k in last.items()}
    count = [0]

    def trace(ln, mem):
        k = count[0]
        count[0] += 1
        gid = position.get(k)
        if gid is None or gid < 0:
            return
        for v in program.writes.get(gid, []):
            loc = program.homes[v]
            _, data, off = mem.region(loc)
            shape = graph.node(v).type.shape
            got = data[off // 4:off // 4 + max(prod(shape), 1)][:prod(shape)].reshape(shape)
            checked[v] = got.copy()
            err = scaled_error(got, ref[v], scales.get(gid, 0.0))
            if err > tol:
                raise AssertionError(f"group k{gid}: value %{v} ({graph.node(v).op}{shape}) differs from the "
                                     f"interpreter by {err:.3g} (launch {ln.kernel.name})")

    scales = group_scales(program, graph, ref)
    checked: dict = {}
    outs = emulate_program(program, inputs, checks=checks, trace=trace)
    producer = {v: gid for gid, vs in program.writes.items() for v in vs}
    for k, (o, v) in enumerate(zip(outs, graph.outputs)):
        err = scaled_error(o, ref[v], scales.get(producer.get(v), 0.0))
        if v in checked:  # the value as its group wrote it: the output must equal it
            err = max(err, relative_error(o, checked[v]))
        if err > tol:
            raise AssertionError(f"output {k} (%{v}) differs from the interpreter by {err:.3g}")
    return outs


def _rms(x) -> float:
    x = np.asarray(x, np.float64)
    fin = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(fin * fin))) if fin.size else 0.0


def group_scales(program, graph, ref) -> dict:
    """Group id -> the largest RMS of the values it reads (graph inputs and buffers)."""
    written = {v: gid for gid, vs in program.writes.items() for v in vs}
    reads: dict = {}
    for gid, vs in program.writes.items():
        reads[gid] = set()
    for n in graph.nodes:
        gid = written.get(n.id)
        if gid is None:
            continue
        for i in n.inputs:
            reads[gid].add(i)
    return {gid: max([_rms(ref[i]) for i in ins if i in ref] + [0.0]) for gid, ins in reads.items()}


def scaled_error(a, b, scale: float) -> float:
    """Normwise relative error of a against b, where the reference norm is at least
    `scale` (the RMS of the computation's inputs) per element: values that cancel to
    rounding noise (an exactly-zero gradient) are compared to the size of what they were
    computed from."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return float("inf")
    fin = np.isfinite(b64)
    if np.any(np.isfinite(a64) != fin) or np.any(np.isnan(a64) != np.isnan(b64)):
        return float("inf")
    if np.any(a64[~fin] != b64[~fin]) and not np.all(np.isnan(b64[~fin])):
        return float("inf")
    floor = scale * np.sqrt(max(fin.sum(), 1))
    return float(np.linalg.norm(a64[fin] - b64[fin]) / max(np.linalg.norm(b64[fin]), floor, 1e-30))


__all__ = ["check_program", "reference_values", "relative_error", "emulate_kernel", "emulate_program", "EmulationError", "uniform", "KernelRun", "Memory"]
