"""One kernel launch emulated over all its blocks, with the checks listed in the package docstring."""
from __future__ import annotations

import numpy as np

from needle.codegen.cuda.gpu_ir import (AtomicAdd, Assign, Barrier, Decl, GpuKernel, IAnd, IDecl, IFloat, If, IOr,
                                        MicroGemm, Rand, SLoad, SStore, Shfl, TileDecl, TileRef, Var)
from needle.codegen.loop_ir import (ACC_IDENTITY, AccInit, AccRef, AccUpdate, Binary, Cmp, FConst, For, IBin, ICmp,
                                    IConst, IVar, Load, Select, Store, Unary)

from .arith import OPS, compile_index, uniform

#: lanes emulated at once (blocks are processed in chunks of about this many threads)
MAX_LANES = 1 << 17
SHARED_LIMIT = 48 * 1024


class EmulationError(AssertionError):
    """A kernel did something undefined on a GPU (see the package docstring)."""


class Buffer:
    """One kernel argument: a flat view of its memory region, at `start` in that region."""

    __slots__ = ("name", "data", "region", "start", "size", "role", "track_loads")

    def __init__(self, name, data, region, start, size, role):
        self.name, self.data, self.region, self.start, self.size, self.role = name, data, region, start, size, role
        self.track_loads = False


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
            new = OPS["accumulate"][s.op](old, v)
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
        elif isinstance(s, For):
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
            return Buffer(name, c, ("const", name), 0, c.size, "in")
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
            hit = _ICACHE[id(e)] = (e, compile_index(e))
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
            return OPS["index"][e.op](self.index(e.a, mask, memo), self.index(e.b, mask, memo))
        if isinstance(e, ICmp):
            return OPS["compare"][e.op](self.index(e.a, mask, memo), self.index(e.b, mask, memo))
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
            return np.asarray(OPS["unary"][e.op](a), np.float32)
        if isinstance(e, Binary):
            a = np.asarray(self.value(e.a, mask, memo), np.float32)
            b = np.asarray(self.value(e.b, mask, memo), np.float32)
            return np.asarray(OPS["binary"][e.op](a, b), np.float32)
        if isinstance(e, Cmp):
            return OPS["compare"][e.op](self.value(e.a, mask, memo), self.value(e.b, mask, memo))
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
        bufs[p.name] = Buffer(p.name, flat, ("param", p.name), 0, p.size, p.role)
    KernelRun(kernel, bufs, {k: v.reshape(-1) for k, v in (consts or {}).items()}, checks).run()
