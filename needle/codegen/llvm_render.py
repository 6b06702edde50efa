"""Loop IR -> LLVM IR text with llvmlite's `ir.IRBuilder`.

The kernel body is one internal function `name.body(float* noalias, ..., i64 lo, i64 hi)`
taking the buffers in `LoopKernel.params` order; when the body is a single top-level loop
it runs that loop's iterations [lo, hi) only (`range_extent` is the loop's extent, else 1
and the body ignores lo/hi). Two entry points call it: `void name(float*, ...)` (the whole
range) and `void name_range(i8** args, i64 lo, i64 hi)`, the native executor's entry,
which splits the range across the thread pool. Loops count with i64 allocas (mem2reg turns them into phis at
O3). A `vector` loop runs its body on <W x float> values over the largest multiple of W,
then the same body on scalars for the tail (W: 8, or 16 on AVX-512 hosts for a loop not
split across threads whose extent is a multiple of 16). Inside a vector body a value that does not
depend on the vector variable stays scalar (uniform) and is splatted where it meets a
vector; a load whose index has stride 1 in the vector variable is one vector load, stride 0
a scalar load, any other stride a gather of scalar loads. Accumulators updated in a vector
loop get a vector partial accumulator, reduced horizontally after the loop.
Elementwise arithmetic carries the `contract` fast-math flag only (FMA formation), so NaN
and Inf keep their IEEE meaning (`reassoc` would let LLVM fold x*a + x into x*(a+1) and
turn inf - inf into inf); accumulator updates also carry `reassoc` (sums may be reordered).
A vector divided by a lane-uniform divisor is multiplied by its exact reciprocal (one scalar
division, hoisted where the divisor is loop-invariant: a softmax or layernorm row divides
once). `arcp` is not used: it lets LLVM replace 1 / sqrt(x) by an estimate whose Newton step
turns sqrt(inf) and sqrt(0) into NaN.
"""
from __future__ import annotations

from llvmlite import ir

from . import vmath
from .loop_ir import (ACC_IDENTITY, AccInit, AccRef, AccUpdate, Binary, Cmp, FConst, For, ICmp, IConst, IVar,
                      Load, LoopKernel, Select, Store, Unary, coefficient, postorder)

F32 = ir.FloatType()
I64 = ir.IntType(64)
FM = ("contract",)
FM_ACC = ("reassoc", "contract")
VECTOR_WIDTH = 8
#: lanes of a vector loop whose extent is a multiple of it, where the host has 512-bit vectors
#: (AVX-512): half the instructions of 8 lanes; a 3x3 max pool's mask compares and blends
#: ran twice as fast, other loops (`render_llvm(wide=...)`)
WIDE_WIDTH = 16


def _max_nan(b, acc, v):
    """max that propagates NaN: v when v is NaN or greater"""
    return b.select(b.or_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered(">", v, acc)), v, acc)


#: the loop IR's ops as LLVM IR, keyed like `loop_ir.VOCABULARY`: unary, binary, index and
#: accumulate ops are functions (builder, operands...); a compare op is its predicate and
#: whether a float compare is ordered (`ne` is unordered: true for NaN); index compares are
#: signed
LLVM_OPS = {
    "unary": {"neg": lambda b, x: b.fneg(x), "exp": vmath.exp, "log": vmath.log, "tanh": vmath.tanh,
              "sqrt": vmath.sqrt, "sin": vmath.sin, "cos": vmath.cos},
    "binary": {"add": lambda b, x, y: b.fadd(x, y, flags=FM), "sub": lambda b, x, y: b.fsub(x, y, flags=FM),
               "mul": lambda b, x, y: b.fmul(x, y, flags=FM), "div": lambda b, x, y: b.fdiv(x, y, flags=FM),
               "pow": vmath.pow},
    "compare": {"eq": ("==", True), "ne": ("!=", False), "gt": (">", True), "ge": (">=", True),
                "lt": ("<", True), "le": ("<=", True)},
    "index": {"add": lambda b, x, y: b.add(x, y), "mul": lambda b, x, y: b.mul(x, y),
              "div": lambda b, x, y: b.sdiv(x, y), "mod": lambda b, x, y: b.srem(x, y)},
    "accumulate": {"sum": lambda b, acc, v: b.fadd(acc, v, flags=FM_ACC), "max": _max_nan},
}


class _Renderer:
    def __init__(self, kernel: LoopKernel, width: int, wide: int):
        self.k = kernel
        self.W = width
        self.wide = wide
        self.module = ir.Module(name=kernel.name)
        ptr = ir.PointerType(F32)
        n = len(kernel.params)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [ptr] * n + [I64, I64]),
                         kernel.name + ".body")
        fn.linkage = "internal"
        for a, p in zip(fn.args, kernel.params):
            a.name = p.name
            a.add_attribute("noalias")
        fn.args[n].name, fn.args[n + 1].name = "lo", "hi"
        self.lo, self.hi = fn.args[n], fn.args[n + 1]
        self.fn = fn
        self.bufs = {p.name: a for a, p in zip(fn.args, kernel.params)}
        self.entry = fn.append_basic_block("entry")
        body = fn.append_basic_block("body")
        self.b = ir.IRBuilder(body)
        self.vars: dict = {}  # loop var -> i64 value
        self.vvar = None  # (name, width) of the vector var while rendering a vector body
        self.accs: dict = {}  # acc -> scalar alloca
        self.vaccs: dict = {}  # acc -> vector alloca inside a vector loop
        self.memo: dict = {}

    def alloca(self, typ, name=""):
        with self.b.goto_block(self.entry):
            return self.b.alloca(typ, name=name)

    def render(self) -> ir.Module:
        body = self.k.body
        if range_extent(self.k) > 1:
            s = body[0]
            if s.kind == "vector" and self.vvar is None:
                self.vector_loop(s, self.lo, self.hi)
            else:
                self.loop(s.var, self.lo, self.hi, 1, s.body)
        else:
            for s in body:
                self.stmt(s)
        self.b.ret_void()
        with self.b.goto_block(self.entry):
            self.b.branch(self.fn.basic_blocks[1])
        self._entry_points()
        return self.module

    def _entry_points(self):
        """`name(float*...)` over the whole range and `name_range(i8**, lo, hi)`."""
        n = len(self.k.params)
        ptr = ir.PointerType(F32)
        whole = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [ptr] * n), self.k.name)
        b = ir.IRBuilder(whole.append_basic_block("entry"))
        b.call(self.fn, list(whole.args) + [ir.Constant(I64, 0), ir.Constant(I64, range_extent(self.k))])
        b.ret_void()
        i8pp = ir.PointerType(ir.PointerType(ir.IntType(8)))
        ranged = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [i8pp, I64, I64]), self.k.name + "_range")
        b = ir.IRBuilder(ranged.append_basic_block("entry"))
        args = [b.bitcast(b.load(b.gep(ranged.args[0], [ir.Constant(I64, k)])), ptr) for k in range(n)]
        b.call(self.fn, args + [ranged.args[1], ranged.args[2]])
        b.ret_void()

    # ---- statements ----------------------------------------------------------------------
    def stmt(self, s):
        b = self.b
        if isinstance(s, For):
            if s.kind == "vector" and s.extent >= self.W and self.vvar is None:
                self.vector_loop(s)
            elif s.extent < self.W:
                self.unrolled(s.var, range(s.extent), s.body)
            else:
                self.loop(s.var, 0, s.extent, 1, s.body)
        elif isinstance(s, Store):
            v = self.fexpr(s.value)
            self.store(s.buf, s.index, v)
        elif isinstance(s, AccInit):
            if s.acc not in self.accs:
                self.accs[s.acc] = self.alloca(F32, s.acc)
            b.store(ir.Constant(F32, ACC_IDENTITY[s.op]), self.accs[s.acc])
        elif isinstance(s, AccUpdate):
            v = self.fexpr(s.value)
            if self.vvar is not None and s.acc in self.vaccs:
                ptr = self.vaccs[s.acc]
                b.store(LLVM_OPS["accumulate"][s.op](b, b.load(ptr), self.splat(v)), ptr)
            else:
                ptr = self.accs[s.acc]
                b.store(LLVM_OPS["accumulate"][s.op](b, b.load(ptr), v), ptr)
        else:
            raise TypeError(f"unknown statement {s!r}")

    def loop(self, var, start, end, step, body):
        """for var in [start, end) by step; bounds are ints or i64 values."""
        b = self.b
        start, end = (x if isinstance(x, ir.Value) else ir.Constant(I64, x) for x in (start, end))
        ctr = self.alloca(I64, var)
        b.store(start, ctr)
        cond = self.fn.append_basic_block(f"{var}.cond")
        blk = self.fn.append_basic_block(f"{var}.body")
        done = self.fn.append_basic_block(f"{var}.end")
        b.branch(cond)
        b.position_at_end(cond)
        i = b.load(ctr)
        b.cbranch(b.icmp_signed("<", i, end), blk, done)
        b.position_at_end(blk)
        saved_vars, saved_memo = dict(self.vars), self.memo
        self.vars[var] = i
        self.memo = {}
        for s in body:
            self.stmt(s)
        self.vars, self.memo = saved_vars, saved_memo
        b.store(b.add(b.load(ctr), ir.Constant(I64, step)), ctr)
        b.branch(cond)
        b.position_at_end(done)

    def unrolled(self, var, indices, body):
        """The body once per constant index: LLVM gets no loop shorter than a vector (its loop
        vectorizer has nothing to gain there, and LLVM 22's hangs on some of them: a 3-trip
        loop of exp/log polynomials)."""
        saved_vars, saved_memo = dict(self.vars), self.memo
        for i in indices:
            self.vars[var] = ir.Constant(I64, i)
            self.memo = {}
            for s in body:
                self.stmt(s)
        self.vars, self.memo = saved_vars, saved_memo

    def vector_loop(self, s: For, lo=None, hi=None):
        """The body on <W x float> over the largest multiple of W, then a scalar tail;
        over [lo, hi) (i64 values) when given, else over the whole extent. W is `wide` for
        a whole loop whose extent it divides; a ranged one keeps `width` (the thread pool's
        chunks of it start at multiples of 8)."""
        narrow = self.W
        if lo is None and s.extent % self.wide == 0:
            self.W = self.wide
        try:
            self._vector_loop(s, lo, hi)
        finally:
            self.W = narrow

    def _vector_loop(self, s: For, lo, hi):
        b, W = self.b, self.W
        if lo is None:
            vend = s.extent - s.extent % W
        else:
            vend = b.sub(hi, b.srem(b.sub(hi, lo), ir.Constant(I64, W)))
        accs = [x.acc for x in s.body if isinstance(x, AccUpdate)]
        ops = {x.acc: x.op for x in s.body if isinstance(x, AccUpdate)}
        vt = ir.VectorType(F32, W)
        for a in accs:
            self.vaccs[a] = self.alloca(vt, a + ".v")
            b.store(ir.Constant(vt, [ACC_IDENTITY[ops[a]]] * W), self.vaccs[a])
        self.vvar = s.var
        self.loop(s.var, 0 if lo is None else lo, vend, W, s.body)
        self.vvar = None
        for a in accs:  # horizontal reduction of the vector partials into the scalar acc
            v = b.load(self.vaccs.pop(a))
            acc = b.load(self.accs[a])
            for lane in range(W):
                acc = LLVM_OPS["accumulate"][ops[a]](b, acc, b.extract_element(v, ir.Constant(ir.IntType(32), lane)))
            b.store(acc, self.accs[a])
        if lo is not None:
            self.loop(s.var, vend, hi, 1, s.body)
        elif vend < s.extent:
            self.unrolled(s.var, range(vend, s.extent), s.body)

    def store(self, buf, index, v):
        b = self.b
        base = self.bufs[buf]
        if self.vvar is None:
            b.store(v, b.gep(base, [self.iexpr_scalar(index)]))
            return
        v = self.splat(v)
        c = coefficient(index, self.vvar)
        if c == 1:
            p = b.bitcast(b.gep(base, [self.iexpr_scalar(index)]), ir.PointerType(v.type))
            b.store(v, p, align=4)
        else:
            idx = self.splat_i(self.iexpr(index))
            for lane in range(self.W):
                ln = ir.Constant(ir.IntType(32), lane)
                b.store(b.extract_element(v, ln), b.gep(base, [b.extract_element(idx, ln)]))

    # ---- index expressions ---------------------------------------------------------------
    def iexpr_scalar(self, e):
        """Index at lane 0 (the vector var's current base)."""
        saved, self.vvar = self.vvar, None
        try:
            return self.iexpr(e)
        finally:
            self.vvar = saved

    def iexpr(self, e):
        b = self.b
        if isinstance(e, IConst):
            return ir.Constant(I64, e.value)
        if isinstance(e, IVar):
            v = self.vars[e.name]
            if e.name == self.vvar:
                vt = ir.VectorType(I64, self.W)
                return b.add(self.splat_i(v), ir.Constant(vt, list(range(self.W))))
            return v
        x, y = self.iexpr(e.a), self.iexpr(e.b)
        if isinstance(x.type, ir.VectorType) or isinstance(y.type, ir.VectorType):
            x, y = self.splat_i(x), self.splat_i(y)
        return LLVM_OPS["index"][e.op](b, x, y)

    def splat_i(self, v):
        return self._splat(v, I64)

    def splat(self, v):
        return self._splat(v, F32) if self.vvar is not None else v

    def _splat(self, v, t):
        if isinstance(v.type, ir.VectorType):
            return v
        vt = ir.VectorType(t, self.W)
        if isinstance(v, ir.Constant):
            return ir.Constant(vt, [v.constant] * self.W)
        one = self.b.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
        return self.b.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                     ir.Constant(ir.VectorType(ir.IntType(32), self.W), [0] * self.W))

    # ---- value expressions ---------------------------------------------------------------
    def fexpr(self, e):
        if id(e) not in self.memo:
            for x in postorder(e, self.memo):  # operands first: expressions of any depth
                self.memo[id(x)] = (x, self._fexpr(x))
        return self.memo[id(e)][1]

    def _fexpr(self, e):
        b = self.b
        if isinstance(e, FConst):
            return ir.Constant(F32, e.value)
        if isinstance(e, AccRef):
            return b.load(self.accs[e.acc])
        if isinstance(e, Load):
            base = self.bufs[e.buf]
            c = coefficient(e.index, self.vvar) if self.vvar else 0
            if c == 0:
                return b.load(b.gep(base, [self.iexpr_scalar(e.index)]))
            if c == 1:
                p = b.bitcast(b.gep(base, [self.iexpr_scalar(e.index)]),
                              ir.PointerType(ir.VectorType(F32, self.W)))
                return b.load(p, align=4)
            idx = self.splat_i(self.iexpr(e.index))
            out = ir.Constant(ir.VectorType(F32, self.W), ir.Undefined)
            for lane in range(self.W):
                ln = ir.Constant(ir.IntType(32), lane)
                out = b.insert_element(out, b.load(b.gep(base, [b.extract_element(idx, ln)])), ln)
            return out
        if isinstance(e, Unary):
            return LLVM_OPS["unary"][e.op](b, self.fexpr(e.a))
        if isinstance(e, Binary):
            x, y = self.fexpr(e.a), self.fexpr(e.b)
            if e.op == "div" and isinstance(x.type, ir.VectorType) and not isinstance(y.type, ir.VectorType):
                # a divisor uniform across the lanes: one exact scalar reciprocal (hoisted out
                # of the loop where y is invariant), then a vector multiply
                y, e = b.fdiv(ir.Constant(F32, 1.0), y, flags=FM), Binary("mul", e.a, e.b)
            return LLVM_OPS["binary"][e.op](b, *self._pair(x, y))
        if isinstance(e, Cmp):
            x, y = self._pair(self.fexpr(e.a), self.fexpr(e.b))
            pred, ordered = LLVM_OPS["compare"][e.op]
            return (b.fcmp_ordered if ordered else b.fcmp_unordered)(pred, x, y)
        if isinstance(e, ICmp):
            x, y = self.iexpr(e.a), self.iexpr(e.b)
            if isinstance(x.type, ir.VectorType) or isinstance(y.type, ir.VectorType):
                x, y = self.splat_i(x), self.splat_i(y)
            return b.icmp_signed(LLVM_OPS["compare"][e.op][0], x, y)
        if isinstance(e, Select):
            c = self.fexpr(e.cond)
            x, y = self._pair(self.fexpr(e.a), self.fexpr(e.b))
            if isinstance(x.type, ir.VectorType) and not isinstance(c.type, ir.VectorType):
                c = self._splat(c, ir.IntType(1))
            elif isinstance(c.type, ir.VectorType) and not isinstance(x.type, ir.VectorType):
                x, y = self._splat(x, F32), self._splat(y, F32)
            return b.select(c, x, y)
        raise TypeError(f"unknown expression {e!r}")

    def _pair(self, x, y):
        if isinstance(x.type, ir.VectorType) != isinstance(y.type, ir.VectorType):
            return self._splat(x, F32), self._splat(y, F32)
        return x, y


def range_extent(kernel: LoopKernel) -> int:
    """The extent `name_range` splits: the single top-level loop's, else 1 (not splittable)."""
    body = kernel.body
    if len(body) == 1 and isinstance(body[0], For) and body[0].extent > 1:
        return body[0].extent
    return 1


def render_llvm(kernel: LoopKernel, width: int = VECTOR_WIDTH, wide: int = VECTOR_WIDTH) -> ir.Module:
    """The kernel as an llvmlite module (str() of it is LLVM IR text): vector loops of `width`
    lanes, or of `wide` lanes where their extent is a multiple of it."""
    return _Renderer(kernel, width, wide).render()
