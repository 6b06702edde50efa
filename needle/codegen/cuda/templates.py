"""Kernels that `lower` does not produce, built directly as GPU IR.

* `pointwise_kernel`: one thread per element of a shape, value from a function of the
  index (copies through views, materialised UnSlice/Concat/Stack/Gather, fills, the RNG);
* `scatter_add_kernels`: IndexAdd (zero the output, then `atomicAdd` every value row);
* `gemm_kernel`: a tiled shared-memory GEMM (there is no cuBLAS): blocks of BM x BN outputs,
  K in steps of BK staged through shared memory by all threads (the contiguous operand
  dimension across neighbouring threads, out-of-range elements as zeros), each thread a
  TM x TN register tile (`MicroGemm`); batch in `blockIdx.z`. Operands are functions of
  (batch, row, k), so transposed/broadcast/permuted views are read in place, and a conv is
  the same kernel with an im2col operand computed on the fly (implicit GEMM; padding is
  a bounds condition).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from math import prod

from ..loop_ir import (AccInit, AccRef, AccUpdate, Buffer, FConst, For, ICmp, IConst, IVar, Load, LoopKernel, Select,
                       Store, coefficient, iadd, idiv, imod, imul, linearize, walk_exprs)
from .gpu_ir import (AtomicAdd, Barrier, GParam, GpuKernel, IAnd, IDecl, IFloat, If, MicroGemm, Rand, Shared, SStore,
                     TileDecl, TileRef)
from .schedule import bind, decode


def loop_nest(shape, inner_fn, prefix="i"):
    """For loops over the non-unit axes of `shape` around inner_fn(index tuple)."""
    idx = tuple(IConst(0) if d == 1 else IVar(f"{prefix}{k}") for k, d in enumerate(shape))
    body = tuple(inner_fn(idx))
    axes = [k for k, d in enumerate(shape) if d != 1]
    for pos, k in enumerate(reversed(axes)):
        body = (For(f"{prefix}{k}", shape[k], "vector" if pos == 0 else "serial", body),)
    return body, {f"{prefix}{k}": d for k, d in enumerate(shape) if d != 1}


def pointwise_kernel(name, shape, value_fn, inputs, out_size=None, restrict=True, stmt=None) -> GpuKernel:
    """out0[linear(i)] = value_fn(i) for every index i of `shape`; `inputs` are
    (name, size) of the buffers value_fn loads. `stmt(idx, value)` replaces the store."""
    out_size = prod(shape) if out_size is None else out_size
    if stmt is None:
        def stmt(idx, _shape=shape):
            return [Store("out0", linearize(idx, _shape), value_fn(idx))]
    body, _ = loop_nest(shape, stmt)
    params = tuple(Buffer(n, s, "in") for n, s in inputs) + (Buffer("out0", out_size, "out"),)
    return bind(LoopKernel(name, params, body), name, restrict=restrict)


def fill_kernel(name, size, value=0.0) -> GpuKernel:
    return pointwise_kernel(name, (size,), lambda idx: FConst(float(value)), [])


def rand_kernel(name, shape, counter, base, stream, inputs) -> GpuKernel:
    return pointwise_kernel(name, shape, lambda idx: Rand(counter, base, stream, linearize(idx, shape)), inputs)


def scatter_add_kernels(name, out_shape, values_shape, k, values_fn, indices_fn, inputs) -> list:
    """IndexAdd: out = zeros(out_shape); out[int(indices[i])] += values[i] for every i."""
    zero = fill_kernel(f"{name}_zero", prod(out_shape))

    def stmt(idx):
        row = IFloat(indices_fn(idx[:k]), bound=out_shape[0])
        return [AtomicAdd("out0", linearize((row,) + tuple(idx[k:]), out_shape), values_fn(idx))]

    scatter = pointwise_kernel(f"{name}_scatter", values_shape, None, inputs, out_size=prod(out_shape), stmt=stmt)
    return [zero, scatter]


# ---- GEMM ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    BM: int
    BN: int
    BK: int
    TM: int
    TN: int

    @property
    def threads(self):
        return (self.BM // self.TM) * (self.BN // self.TN)


TILES = {"128x128": Tile(128, 128, 8, 8, 8), "64x64": Tile(64, 64, 16, 4, 4), "32x32": Tile(32, 32, 16, 2, 2),
         "16x64": Tile(16, 64, 16, 1, 4), "64x16": Tile(64, 16, 16, 4, 1)}
#: 128x128 tiles (8x8 outputs per thread: twice the FMAs per shared-memory load of 4x4)
#: once they alone make at least this many blocks (on an H200, 132 SMs: 632 blocks ran 15%
#: faster than 64x64 tiles, 156 blocks 45% slower: one block per SM hides no latency)
BIG_TILE_BLOCKS = 512


def choose_tile(M, N) -> Tile:
    if M >= 128 and N >= 128 and (M // 128) * (N // 128) >= BIG_TILE_BLOCKS:
        return TILES["128x128"]
    if M <= 16 and N > 32:
        return TILES["16x64"]
    if N <= 16 and M > 32:
        return TILES["64x16"]
    if M >= 64 and N >= 64:
        return TILES["64x64"]
    return TILES["32x32"]


@dataclass
class Operand:
    """A GEMM operand: `fn(batch vars, row, col)` -> (IDecls, extra condition or None,
    value, name of the index variable that walks the row fastest, same for the column);
    `inputs` the (buffer, size) pairs its values load."""
    fn: object
    inputs: list


def _first_load(e):
    for x in walk_exprs(e):
        if isinstance(x, Load):
            return x
    return None


def _fast(value, var) -> bool:
    """Whether the operand's load has unit stride in the index variable `var`."""
    ld = _first_load(value)
    return ld is not None and coefficient(ld.index, var) == 1


#: a GEMM of fewer blocks than this splits K (when K is long) until it has about this many
SPLIT_K_BLOCKS = 256
#: ... each split keeping at least this many BK-steps of K; at most SPLIT_K_MAX splits
SPLIT_K_MIN_STEPS, SPLIT_K_MAX = 16, 16


def split_k(M, N, K, batch: int, tile: Tile | None = None) -> int:
    """How many slices of K a GEMM's blocks share (1: none): a GEMM with few output tiles
    and a long K (weight gradients: K = the batch's rows) would leave most of the GPU idle.
    `NEEDLE_CUDA_SPLIT_K=0` turns it off (to measure what it gains)."""
    if os.environ.get("NEEDLE_CUDA_SPLIT_K", "1") == "0":
        return 1
    t = tile or choose_tile(M, N)
    blocks = -(-N // t.BN) * -(-M // t.BM) * batch
    steps = -(-K // t.BK)
    if blocks >= SPLIT_K_BLOCKS // 2 or steps < 2 * SPLIT_K_MIN_STEPS:
        return 1
    return max(1, min(-(-SPLIT_K_BLOCKS // blocks), steps // SPLIT_K_MIN_STEPS, SPLIT_K_MAX))


def gemm_kernels(name, M, N, K, batch_shape, a: Operand, b: Operand, out_size, restrict=True, note="",
                 epilogue=None, outputs=None, extra_inputs=()) -> tuple[list, int]:
    """(kernels, splits) of a GEMM (see gemm_kernel): one tiled kernel, or with split-K
    (`split_k`) a tiled kernel writing one partial product per slice of K into the
    parameter `part` (scratch the caller places) and a pointwise kernel summing the slices
    in a fixed order (deterministic) and applying the epilogue."""
    nb = prod(batch_shape)
    splits = split_k(M, N, K, nb)
    if splits == 1:
        return [gemm_kernel(name, M, N, K, batch_shape, a, b, out_size, restrict=restrict, note=note,
                            epilogue=epilogue, outputs=outputs, extra_inputs=extra_inputs)], 1
    partial = gemm_kernel(name, M, N, K, batch_shape, a, b, out_size, restrict=restrict, note=note, splits=splits)
    total = split_k_sum(f"{name}_sum", M, N, batch_shape, splits, out_size, restrict, epilogue, outputs,
                        extra_inputs)
    return [partial, total], splits


def split_k_sum(name, M, N, batch_shape, splits, out_size, restrict=True, epilogue=None, outputs=None,
                extra_inputs=()) -> GpuKernel:
    """C = the sum of the `splits` partial products in `part`, stored into `out0` or through
    `epilogue` like gemm_kernel's; one thread per element, the slices added in order."""
    nb = prod(batch_shape)
    bb = IVar("bb") if nb > 1 else IConst(0)
    gm, gn = IVar("gm"), IVar("gn")
    bvars, stride = [], nb
    for d in batch_shape:
        stride //= d
        bvars.append(IConst(0) if d == 1 else imod(idiv(bb, stride), d))
    cell = iadd(imul(iadd(imul(bb, IConst(M)), gm), IConst(N)), gn)
    part = Load("part", iadd(imul(IVar("s"), IConst(nb * M * N)), cell))
    inner = (AccInit("acc", "sum"), For("s", splits, "serial", (AccUpdate("acc", "sum", part),)))
    if epilogue is None:
        inner += (Store("out0", cell, AccRef("acc")),)
    else:
        inner += tuple(epilogue(tuple(bvars), gm, gn, AccRef("acc")))
    body = (For("gm", M, "serial", (For("gn", N, "serial", inner),)),)
    if nb > 1:
        body = (For("bb", nb, "serial", body),)
    params = ((Buffer("part", splits * nb * M * N, "in"),) + tuple(Buffer(n, s, "in") for n, s in extra_inputs)
              + tuple(Buffer(n, s, "out") for n, s in (outputs or [("out0", out_size)])))
    kernel = bind(LoopKernel(name, params, body), name, restrict=restrict)
    return dataclasses.replace(kernel, note=f"split-K sum of {splits} partial products; " + kernel.note)


def gemm_kernel(name, M, N, K, batch_shape, a: Operand, b: Operand, out_size, tile: Tile | None = None,
                restrict=True, note="", epilogue=None, outputs=None, extra_inputs=(), splits: int = 1) -> GpuKernel:
    """C[batch, m, n] = sum_k A(batch, m, k) * B(batch, k, n), stored contiguously in `out0`
    (A's and B's buffers are the kernel's inputs, in order). With `epilogue(bvars, m, n,
    value)` -> [Store...] the tile's values are stored by those statements instead (fused
    elementwise epilogue), into `outputs` [(name, size)], reading `extra_inputs` too. With
    `splits` > 1 (split-K; no epilogue), blockIdx.z also picks a slice of K and the block's
    partial product goes to `part[slice, batch, m, n]`."""
    t = tile or choose_tile(M, N)
    NT = t.threads
    BM, BN, BK, TM, TN = t.BM, t.BN, t.BK, t.TM, t.TN
    assert (BM * BK) % NT == 0 and (BN * BK) % NT == 0
    assert splits == 1 or (epilogue is None and not outputs and not extra_inputs)
    nb = prod(batch_shape)
    a_decls, a_cond, a_val, _, a_col = a.fn(tuple(IConst(0) if d == 1 else IVar(f"b{k}") for k, d in enumerate(batch_shape)),
                                            IVar("gm"), IVar("gk"))
    k_fast = _fast(a_val, a_col)
    b_decls, b_cond, b_val, b_row, b_col = b.fn(tuple(IConst(0) if d == 1 else IVar(f"b{k}") for k, d in enumerate(batch_shape)),
                                                IVar("hk"), IVar("hn"))
    n_fast = _fast(b_val, b_col) or not _fast(b_val, b_row)
    # shared tiles are k-major; a transposed store (consecutive threads along k) gets a
    # padded row so that its 32 lanes hit 32 different banks
    SA = BM + (1 if k_fast else 0)
    SB = BN + (0 if n_fast else 1)
    bvars = tuple(IConst(0) if d == 1 else IVar(f"b{k}") for k, d in enumerate(batch_shape))
    body = [IDecl("m0", imul(IVar("by"), IConst(BM))), IDecl("n0", imul(IVar("bx"), IConst(BN)))]
    bz = IVar("bz")
    if splits > 1 and nb > 1:
        body += [IDecl("bb", idiv(bz, splits)), IDecl("ks", imod(bz, splits))]
        bz = IVar("bb")
    elif splits > 1:
        body.append(IDecl("ks", bz))
    if nb > 1:
        loops = [For(f"b{k}", d, "serial", ()) for k, d in enumerate(batch_shape) if d != 1]
        body += decode(bz, loops)
    body += [IDecl("trow", idiv(IVar("tx"), BN // TN)), IDecl("tcol", imod(IVar("tx"), BN // TN)),
             TileDecl("c", TM, TN)]

    # A tile: As[ak * SA + am] = A(batch, m0 + am, k0 + ak)
    ea = iadd(imul(IVar("la"), IConst(NT)), IVar("tx"))
    la = ([IDecl("am", idiv(ea, BK)), IDecl("ak", imod(ea, BK))] if k_fast else
          [IDecl("am", imod(ea, BM)), IDecl("ak", idiv(ea, BM))])
    la += [IDecl("gm", iadd(IVar("m0"), IVar("am"))), IDecl("gk", iadd(IVar("k0"), IVar("ak")))] + list(a_decls)
    cond = IAnd(ICmp("lt", IVar("gm"), IConst(M)), ICmp("lt", IVar("gk"), IConst(K)))
    if a_cond is not None:
        cond = IAnd(cond, a_cond)
    la.append(SStore("As", iadd(imul(IVar("ak"), IConst(SA)), IVar("am")), Select(cond, a_val, FConst(0.0))))

    # B tile: Bs[bk * SB + bn] = B(batch, k0 + bk, n0 + bn)
    eb = iadd(imul(IVar("lb"), IConst(NT)), IVar("tx"))
    lb = ([IDecl("bk", idiv(eb, BN)), IDecl("bn", imod(eb, BN))] if n_fast else
          [IDecl("bk", imod(eb, BK)), IDecl("bn", idiv(eb, BK))])
    lb += [IDecl("hk", iadd(IVar("k0"), IVar("bk"))), IDecl("hn", iadd(IVar("n0"), IVar("bn")))] + list(b_decls)
    cond = IAnd(ICmp("lt", IVar("hk"), IConst(K)), ICmp("lt", IVar("hn"), IConst(N)))
    if b_cond is not None:
        cond = IAnd(cond, b_cond)
    lb.append(SStore("Bs", iadd(imul(IVar("bk"), IConst(SB)), IVar("bn")), Select(cond, b_val, FConst(0.0))))

    ktiles = -(-K // BK)
    step = [IDecl("k0", imul(IVar("kt"), IConst(BK))),
            For("la", BM * BK // NT, "unrolled", tuple(la)),
            For("lb", BN * BK // NT, "unrolled", tuple(lb)),
            Barrier(),
            MicroGemm("c", "As", iadd(iadd(imul(IVar("kk"), IConst(SA)), IVar("trow")), imul(IVar("mi"), IConst(BM // TM))),
                      "Bs", iadd(iadd(imul(IVar("kk"), IConst(SB)), IVar("tcol")), imul(IVar("nj"), IConst(BN // TN))),
                      BK, TM, TN),
            Barrier()]
    if splits > 1:  # slice ks runs K-steps ks*per ... (the last slice's overshoot loads zeros)
        per = -(-ktiles // splits)
        body.append(For("kq", per, "serial", (IDecl("kt", iadd(imul(IVar("ks"), IConst(per)), IVar("kq"))),)
                        + tuple(step)))
    else:
        body.append(For("kt", ktiles, "serial", tuple(step)))
    for mi in range(TM):
        for nj in range(TN):
            gm = iadd(iadd(IVar("m0"), IVar("trow")), IConst(mi * (BM // TM)))
            gn = iadd(iadd(IVar("n0"), IVar("tcol")), IConst(nj * (BN // TN)))
            row = iadd(imul(bz, IConst(M)), gm) if nb > 1 else gm
            if splits > 1:
                cell = iadd(imul(iadd(imul(IVar("ks"), IConst(nb * M)), row), IConst(N)), gn)
                stores = (Store("part", cell, TileRef("c", mi, nj)),)
            elif epilogue is None:
                stores = (Store("out0", iadd(imul(row, IConst(N)), gn), TileRef("c", mi, nj)),)
            else:
                stores = tuple(epilogue(bvars, gm, gn, TileRef("c", mi, nj)))
            body.append(If(IAnd(ICmp("lt", gm, IConst(M)), ICmp("lt", gn, IConst(N))), stores))
    ins = []
    for n, s in list(a.inputs) + list(b.inputs) + list(extra_inputs):
        if n not in [x for x, _ in ins]:
            ins.append((n, s))
    params = tuple(GParam(n, s, "in", restrict if isinstance(restrict, bool) else restrict.get(n, True))
                   for n, s in ins)
    for n, s in ([("part", splits * nb * M * N)] if splits > 1 else (outputs or [("out0", out_size)])):
        params += (GParam(n, s, "out", restrict if isinstance(restrict, bool) else restrict.get(n, True)),)
    grid = (-(-N // BN), -(-M // BM), nb * splits)
    kernel = GpuKernel(name, params, grid, (NT, 1, 1), tuple(body), (Shared("As", BK * SA), Shared("Bs", BK * SB)),
                       note=f"tiled GEMM {BM}x{BN}x{BK}, {TM}x{TN} per thread: M={M} N={N} K={K} batch={nb}"
                            f" ({'k' if k_fast else 'm'}-contiguous A, {'n' if n_fast else 'k'}-contiguous B)"
                            + (f"; split-K in {splits} slices" if splits > 1 else "")
                            + (f"; {note}" if note else ""))
    return kernel


def conv_operands(x_fn, w_fn, x_shape, w_shape, stride, padding, x_inputs, w_inputs):
    """Implicit-GEMM operands of a NHWC conv: A(m, k) = im2col(x), B(k, n) = w, with
    m = (n, oh, ow), k = (kh, kw, ci)."""
    n_, H, W, C = x_shape
    KH, KW, _, CO = w_shape
    Ho = (H + 2 * padding - KH) // stride + 1
    Wo = (W + 2 * padding - KW) // stride + 1

    def a_fn(bvars, gm, gk):
        decls = [IDecl("an", idiv(gm, Ho * Wo)), IDecl("aoh", imod(idiv(gm, Wo), Ho)), IDecl("aow", imod(gm, Wo)),
                 IDecl("akh", idiv(gk, KW * C)), IDecl("akw", imod(idiv(gk, C), KW)), IDecl("aci", imod(gk, C)),
                 IDecl("ah", iadd(iadd(imul(IVar("aoh"), IConst(stride)), IVar("akh")), IConst(-padding))),
                 IDecl("aw", iadd(iadd(imul(IVar("aow"), IConst(stride)), IVar("akw")), IConst(-padding)))]
        cond = None
        if padding:
            cond = IAnd(IAnd(ICmp("ge", IVar("ah"), IConst(0)), ICmp("lt", IVar("ah"), IConst(H))),
                        IAnd(ICmp("ge", IVar("aw"), IConst(0)), ICmp("lt", IVar("aw"), IConst(W))))
        val = x_fn((IVar("an"), IVar("ah"), IVar("aw"), IVar("aci")))
        return decls, cond, val, "aw", "aci"

    def b_fn(bvars, gk, gn):
        decls = [IDecl("bkh", idiv(gk, KW * C)), IDecl("bkw", imod(idiv(gk, C), KW)), IDecl("bci", imod(gk, C))]
        return decls, None, w_fn((IVar("bkh"), IVar("bkw"), IVar("bci"), gn)), "bci", gn.name

    return Operand(a_fn, x_inputs), Operand(b_fn, w_inputs), (n_ * Ho * Wo, CO, KH * KW * C)


def _unravel_decls(lin, dims, names):
    """IDecls of names[i] = the i-th coordinate of `lin` in row-major `dims`."""
    out, stride = [], 1
    strides = []
    for d in reversed(dims):
        strides.append(stride)
        stride *= d
    strides.reverse()
    for k, (name, d, st) in enumerate(zip(names, dims, strides)):
        e = idiv(lin, st)
        if k > 0:
            e = imod(e, d)
        out.append(IDecl(name, e))
    return out


def conv_data_operands(g_fn, w_fn, g_shape, w_shape, size, stride, padding):
    """ConvBackwardData as an implicit GEMM: dx[(n, h, w), ci] = sum over k = (kh, kw, co) of
    g[n, (h + p - kh) / s, (w + p - kw) / s, co] (where that is an integer inside the output
    grid, else 0) * w[kh, kw, ci, co]; no scatter, no atomics."""
    n_, Ho, Wo, CO = g_shape
    KH, KW, CI, _ = w_shape
    H, W = size

    def a_fn(bvars, gm, gk):
        decls = _unravel_decls(gm, (n_, H, W), ("an", "ah", "aw"))
        decls += _unravel_decls(gk, (KH, KW, CO), ("akh", "akw", "aco"))
        decls += [IDecl("th", iadd(iadd(IVar("ah"), IConst(padding)), imul(IVar("akh"), IConst(-1)))),
                  IDecl("tw", iadd(iadd(IVar("aw"), IConst(padding)), imul(IVar("akw"), IConst(-1))))]
        cond = IAnd(ICmp("ge", IVar("th"), IConst(0)), ICmp("ge", IVar("tw"), IConst(0)))
        if stride != 1:
            cond = IAnd(cond, IAnd(ICmp("eq", imod(IVar("th"), stride), IConst(0)),
                                   ICmp("eq", imod(IVar("tw"), stride), IConst(0))))
        oh, ow = idiv(IVar("th"), stride), idiv(IVar("tw"), stride)
        cond = IAnd(cond, IAnd(ICmp("lt", oh, IConst(Ho)), ICmp("lt", ow, IConst(Wo))))
        return decls, cond, g_fn((IVar("an"), oh, ow, IVar("aco"))), "aw", "aco"

    def b_fn(bvars, gk, gn):
        decls = _unravel_decls(gk, (KH, KW, CO), ("bkh", "bkw", "bco"))
        return decls, None, w_fn((IVar("bkh"), IVar("bkw"), gn, IVar("bco"))), "bco", gn.name

    return Operand(a_fn, []), Operand(b_fn, []), (n_ * H * W, CI, KH * KW * CO)


def conv_filter_operands(a_fn_, g_fn, a_shape, g_shape, kernel, stride, padding):
    """ConvBackwardFilter as one GEMM: dw[(kh, kw, ci), co] = sum over k = (n, oh, ow) of
    a[n, oh * s - p + kh, ow * s - p + kw, ci] (0 in the padding) * g[n, oh, ow, co]."""
    n_, H, W, CI = a_shape
    _, Ho, Wo, CO = g_shape
    KH, KW = kernel

    def a_fn(bvars, gm, gk):
        decls = _unravel_decls(gm, (KH, KW, CI), ("akh", "akw", "aci"))
        decls += _unravel_decls(gk, (n_, Ho, Wo), ("an", "aoh", "aow"))
        decls += [IDecl("ah", iadd(iadd(imul(IVar("aoh"), IConst(stride)), IVar("akh")), IConst(-padding))),
                  IDecl("aw", iadd(iadd(imul(IVar("aow"), IConst(stride)), IVar("akw")), IConst(-padding)))]
        cond = None
        if padding:
            cond = IAnd(IAnd(ICmp("ge", IVar("ah"), IConst(0)), ICmp("lt", IVar("ah"), IConst(H))),
                        IAnd(ICmp("ge", IVar("aw"), IConst(0)), ICmp("lt", IVar("aw"), IConst(W))))
        return decls, cond, a_fn_((IVar("an"), IVar("ah"), IVar("aw"), IVar("aci"))), "aci", "aow"

    def b_fn(bvars, gk, gn):
        decls = _unravel_decls(gk, (n_, Ho, Wo), ("qn", "qoh", "qow"))   # (bn is the tiler's)
        return decls, None, g_fn((IVar("qn"), IVar("qoh"), IVar("qow"), gn)), "qow", gn.name

    return Operand(a_fn, []), Operand(b_fn, []), (KH * KW * CI, CO, n_ * Ho * Wo)


__all__ = ["conv_data_operands", "conv_filter_operands", "pointwise_kernel", "fill_kernel", "rand_kernel", "scatter_add_kernels", "gemm_kernel", "gemm_kernels",
           "split_k", "split_k_sum", "conv_operands",
           "Operand", "Tile", "TILES", "choose_tile", "loop_nest"]
