"""The CPU program's BLAS steps: GEMM (MatMul) and conv groups with their epilogues.

A mixin of `CpuBuilder` (program.py): an extern group's anchor becomes a `GemmStep` or a
`ConvStep` of backends/cpu/program.cc, its operands read in place where a view allows it:

* a MatMul is a BLAS GEMM on its operands in place (a transposed or reshaped operand is
  passed as a transposed/strided GEMM operand), batched with broadcast operands; its
  elementwise epilogue runs as an LLVM kernel on each block of rows right after the GEMM
  wrote them (while they are in cache: the step's `Epilogue`) when it reads the product
  element by element, else as a kernel after the GEMM;
* a Conv is im2col + GEMM by cache-sized blocks of output pixels, one block buffer per
  thread; its input gradient (ConvBackwardData) GEMM + col2im, its weight gradient
  (ConvBackwardFilter) im2col + one GEMM; their epilogues as for a GEMM.
"""
from __future__ import annotations

import dataclasses
from math import prod

import numpy as np

from ...ops.registry import op_from_node
from ...passes.fusion import node_class
from ..llvm_render import range_extent
from .steps import ConvStep, Epilogue, GemmStep

#: bytes of a float32 value
F32 = 4
#: conv op -> its backends/cpu/program.cc conv step kind
_CONV_KINDS = {"Conv": 0, "ConvBackwardData": 1, "ConvBackwardFilter": 2}
#: the ops a GEMM step computes
_GEMM_OPS = ("MatMul",)
#: program.cc's conv_blocked: at most this many threads, each with a patch block of this
#: size but at least this many rows
_CONV_THREADS, _CONV_BLOCK_BYTES, _CONV_MIN_ROWS = 8, 256 << 10, 256
#: terms of a product per pass of backends/cpu/kernels_gemm.inc's small_gemm over C (KC)
_GEMM_PASS = 256


class GemmConvSteps:
    """`CpuBuilder`'s extern groups (MatMul, Conv, ConvBackwardData/Filter)."""

    def extern(self, group) -> tuple[str, str]:
        g = self.graph
        anchor = g.node(group.anchor)
        if anchor.op not in _CONV_KINDS and anchor.op not in _GEMM_OPS:
            return self.opaque(group)
        rest = tuple(i for i in group.node_ids if i != anchor.id)
        c = self._out_slot(anchor.id, transient=anchor.id not in group.outputs)
        if anchor.op in _CONV_KINDS:
            k = self._conv(anchor, c)
            return "conv", self._epilogue(group, anchor, rest, c, k) if rest else ""
        slots, p, offsets = self._gemm_params(anchor)
        self.stats["gemms"] += 1
        k = self._emit(GemmStep((*slots, c), tuple(p), tuple(offsets)), (anchor.id,), (anchor.id,), "blas",
                       f"k{group.id}")
        return "gemm", self._epilogue(group, anchor, rest, c, k) if rest else ""

    def _epilogue(self, group, anchor, rest, c_slot, gemm: int) -> str:
        """The elementwise ops after a GEMM/conv: fused into the GEMM or conv step (`gemm`: its
        index) by row blocks (a conv's: output pixels) when they read its result element by
        element and need no step before them (the copy of a wide join), else a kernel after it.
        Returns how, for the group's report."""
        outputs = tuple(o for o in group.outputs if o != anchor.id)
        if not outputs:
            return ""
        self.loc.setdefault(anchor.id, c_slot)
        ex = self._expand(rest, outputs)
        kernel = self._kernel(ex)
        ins = [self._slot_of(i) for i in ex.inputs]
        outs = [self._out_slot(v) for v in outputs]
        # a single product's rows, when no step (a copy of an operand) came after the GEMM's:
        # the fused epilogue runs inside the GEMM step
        step = self.steps[gemm] if gemm == len(self.steps) - 1 else None
        rows = _epilogue_rows(step) if step is not None else 0
        if kernel is not None and rows and range_extent(kernel) % rows == 0 and self._rowwise(anchor, rest, outputs):
            if self._in_place(group, anchor, step, c_slot, ins, outs):
                # the step writes its result where the epilogue writes, which rewrites it in
                # place while in cache: the result never goes to memory on its own
                ins = [outs[0] if s == c_slot else s for s in ins]
                step = dataclasses.replace(step, slots=(*step.slots[:2], outs[0], *step.slots[3:]))
            epilogue = Epilogue(kernel, (*ins, *outs), tuple(p.size for p in kernel.params), range_extent(kernel))
            self.steps[gemm] = dataclasses.replace(step, epilogue=epilogue)
            if self.sources is not None:
                where, share = self.sources[gemm].where + "+llvm", self.sources[gemm].share
                self.sources[gemm] = self._source(group.node_ids, group.outputs, where, f"k{group.id}", share)
            self.stats["fused_epilogues"] += 1
            self.stats["llvm_kernels"] += 1
            return "epilogue fused"
        if kernel is not None:
            self._add_kernel(kernel, ins + outs, f"k{group.id}.epi", ex)
            return "epilogue kernel"
        self._callback(ex, ins, outs, f"k{group.id}.epi")
        return "epilogue callback"

    def _in_place(self, group, anchor, step, c_slot, ins, outs) -> bool:
        """Whether a fused epilogue's one output (of the result's shape: `_rowwise`) can hold
        the GEMM/conv result too: the result is a transient written by this step alone (not
        the last part of a product split along K), and that output's memory is none of the
        step's operands' nor of the epilogue's other inputs (the step would overwrite them)."""
        if anchor.id in group.outputs or len(outs) != 1:
            return False
        if isinstance(step, GemmStep) and step.accumulate:
            return False
        key = lambda slot: self._place(slot) or ("io", slot)  # noqa: E731
        others = [*step.slots[:2], *(s for s in ins if s != c_slot)]
        return key(outs[0]) not in {key(s) for s in others}

    def _rowwise(self, anchor, rest, outputs) -> bool:
        """True if the epilogue reads the GEMM result only at the element it writes: every
        op depending on it is elementwise over its shape, and every output has that shape."""
        g = self.graph
        shape = anchor.type.shape
        dep = {anchor.id}
        for i in rest:
            n = g.node(i)
            if any(j in dep for j in n.inputs):
                if node_class(n) != "elementwise" or n.type.shape != shape:
                    return False
                dep.add(i)
        return all(self._shape(o) == shape for o in outputs)

    def _channel_parts(self, x: int, co: int) -> list:
        """[(value, channels)] a 1x1 conv of `x` reads: `x` whole, or the pieces of a channel
        concat whose pieces all have buffers, as one GEMM per piece against its rows of the
        weight, summed in C: no copy of the pieces into one buffer (SqueezeNet's fire
        modules), when the passes over C that the split adds (small_gemm makes one per
        _GEMM_PASS terms) move no more floats than that copy."""
        node = self.graph.node(x)
        shape = node.type.shape
        if not self._buffer_join(node) or int(node.attr("axis")) % len(shape) != len(shape) - 1:
            return [(x, shape[-1])]
        pieces = self.graph.node(node.inputs[0]).inputs
        if any(len(self._shape(p)) != len(shape) for p in pieces):   # a stack: pieces of a lower rank
            return [(x, shape[-1])]
        widths = [self._shape(p)[-1] for p in pieces]
        passes = lambda k: -(-k // _GEMM_PASS)  # noqa: E731
        if (sum(passes(w) for w in widths) - passes(shape[-1])) * co > shape[-1]:
            return [(x, shape[-1])]
        return list(zip(pieces, widths))

    def _gemm_operand(self, v: int, ndim_out: int):
        """(slot, transposed, leading dim, batch stride, matrix shape) for GEMM operand v:
        a transpose of its last two axes or a reshape of a buffer is read in place."""
        g = self.graph
        node = g.node(v)
        shape = node.type.shape
        trans = False
        base = v
        op = op_from_node(node.op, node.attr_dict) if self.is_view(v) else None
        if hasattr(op, "permutation"):  # a permutation of the axes
            nd = len(shape)
            if tuple(op.permutation(nd)) == tuple(range(nd - 2)) + (nd - 1, nd - 2):
                base, trans = node.inputs[0], True
        elif op is not None and op.aliases_input:
            base = node.inputs[0]   # a reshape of a compact buffer is the same memory
        slot = self._slot_of(base)
        rows, cols = shape[-2], shape[-1]
        ld = rows if trans else cols
        batch = prod(shape[:-2])
        return slot, trans, ld, (rows * cols if batch > 1 else 0), batch

    def _gemm_params(self, node):
        """(operand slots, GEMM parameters, per-batch element offsets of a and b)."""
        a, b = node.inputs
        out = node.type.shape
        sa, sb = self._shape(a), self._shape(b)
        batch = prod(out[:-2])
        sl_a, ta, lda, _, _ = self._gemm_operand(a, len(out))
        sl_b, tb, ldb, _, _ = self._gemm_operand(b, len(out))
        m, k, n = sa[-2], sa[-1], sb[-1]
        offsets = []
        if batch > 1:  # numpy broadcasting of the batch axes, as element offsets per product
            for s in (sa, sb):
                lead = (1,) * (len(out) - len(s)) + tuple(s[:-2])
                index = np.broadcast_to(np.arange(prod(lead)).reshape(lead), out[:-2]).reshape(-1)
                offsets.append(index * (s[-2] * s[-1]))
            offsets = [int(x) for pair in zip(*offsets) for x in pair]
        return [sl_a, sl_b], [batch, m, n, k, int(ta), int(tb), lda, ldb, 0, 0, m * n, 0], offsets

    def _conv(self, node, out_slot) -> int:
        """Conv (kind 0), ConvBackwardData (1) or ConvBackwardFilter (2) as a program step,
        with the scratch backends/cpu/program.cc needs for it; its index. A 1x1 stride-1
        unpadded Conv is a GEMM step: (pixels, Ci) @ (Ci, Co)."""
        kind = _CONV_KINDS[node.op]
        a, b = node.inputs
        s, p = int(node.attr("stride")), int(node.attr("padding"))
        if kind == 0:     # x, w
            (n, h, wd, ci), (kh, kw, _, co) = self._shape(a), self._shape(b)
        elif kind == 1:   # g, w -> dx of the conv's input size
            n, co = self._shape(a)[0], self._shape(a)[3]
            kh, kw, ci, _ = self._shape(b)
            h, wd = node.attr("size")
        else:             # x, g -> dw
            n, h, wd, ci = self._shape(a)
            co = self._shape(b)[3]
            kh, kw = node.attr("kernel")
        self.stats["convs"] += 1
        if kind == 0 and (kh, kw, s, p) == (1, 1, 1, 0):
            m, parts, c0 = n * h * wd, self._channel_parts(a, co), 0
            for j, (part, width) in enumerate(parts):  # one GEMM, or one per piece of a concat
                step = GemmStep((self._slot_of(part), self._slot_of(b), out_slot),
                                (1, m, co, width, 0, 0, width, co, 0, 0, m * co, int(j > 0)), (0, c0 * co))
                index = self._emit(step, (node.id,), (node.id,), "blas",
                                   f"conv%{node.id}" + (f"[{j}]" if len(parts) > 1 else ""), width / ci)
                c0 += width
            return index
        ho, wo = (h + 2 * p - kh) // s + 1, (wd + 2 * p - kw) // s + 1
        row = kh * kw * ci
        if kind == 0:     # program.cc conv_blocked: a block of patches per thread
            most = max(16, _CONV_BLOCK_BYTES // (4 * row), _CONV_MIN_ROWS)
            floats = min(_CONV_THREADS * most, n * ho * wo + most) * row
            if p > 0:     # or conv_rows, conv_in_place (program.cc decides): the zero-padded input
                floats = max(floats, n * (h + 2 * p) * (wd + 2 * p) * ci)
        else:             # the im2col matrix (patches, or their gradients)
            floats = n * ho * wo * row
        cols = self._scratch(floats * F32)
        step = ConvStep(kind, (self._slot_of(a), self._slot_of(b), out_slot, cols), (n, h, wd, ci, kh, kw, co, s, p))
        return self._emit(step, (node.id,), (node.id,), "im2col+blas", f"conv%{node.id}")


def _epilogue_rows(step) -> int:
    """The rows a step's fused epilogue can run by: a single GEMM's rows, a conv's output
    pixels (0: none)."""
    if isinstance(step, GemmStep):
        return step.params[1] if step.params[0] == 1 else 0
    if isinstance(step, ConvStep) and step.kind == 0:
        n, h, w, _, kh, kw, _, s, p = step.params
        return n * ((h + 2 * p - kh) // s + 1) * ((w + 2 * p - kw) // s + 1)
    return 0
