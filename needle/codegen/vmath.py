"""Vectorisable float32 exp / log / tanh / sin / cos emitted inline as LLVM IR (Cephes-style
polynomials).

Each function takes an `ir.IRBuilder` and a float or <N x float> value and returns one of
the same type, built only from arithmetic, compares, selects, `llvm.floor` and bit casts,
so the code is the same for a vector body and its scalar tail and never calls libm.
Accuracy is ~1e-7 relative; NaN and Inf behave like libm: exp(+inf)=inf, exp(-inf)=0,
log(0)=-inf, log(x<0)=nan, tanh(+-inf)=+-1, NaN in gives NaN out.

sin and cos reduce the argument by multiples of pi/2 in double precision (a three-part
Cody-Waite split of pi/2, exact for |x| < 2**24), then evaluate Cephes' float polynomials
on [-pi/4, pi/4]: within ~1e-7 absolute of the true value. Lanes beyond 2**24, infinite or
NaN (sin(+-inf) = NaN) take libm's `sinf`/`cosf` on a branch that only runs when a vector
has such a lane.
"""
from __future__ import annotations

from llvmlite import ir

F32 = ir.FloatType()
F64 = ir.DoubleType()
I32 = ir.IntType(32)
FM = ("reassoc", "contract")


def _like(x, t_scalar, value):
    """A constant of `value` shaped like x (scalar or vector) with element type t_scalar."""
    if isinstance(x.type, ir.VectorType):
        return ir.Constant(ir.VectorType(t_scalar, x.type.count), [value] * x.type.count)
    return ir.Constant(t_scalar, value)


def _ity(x):
    return ir.VectorType(I32, x.type.count) if isinstance(x.type, ir.VectorType) else I32


def _c(x, v):
    return _like(x, F32, float(v))


def _fma(b, x, m, a):
    return b.fadd(b.fmul(x, m, flags=FM), a, flags=FM)


def _poly(b, x, coefs):
    acc = _c(x, coefs[0])
    for c in coefs[1:]:
        acc = _fma(b, acc, x, _c(x, c))
    return acc


def intrinsic(b, name, *args):
    """Call the overloaded intrinsic `llvm.<name>` on float or vector arguments."""
    t = args[0].type
    elem = t.element if isinstance(t, ir.VectorType) else t
    bits = "f64" if isinstance(elem, ir.DoubleType) else "f32"
    suffix = f"v{t.count}{bits}" if isinstance(t, ir.VectorType) else bits
    full = f"llvm.{name}.{suffix}"
    fn = b.module.globals.get(full)
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(t, [t] * len(args)), full)
    return b.call(fn, list(args))


def _floor(b, x):
    return intrinsic(b, "floor", x)


def _sel(b, cond, a, c):
    return b.select(cond, a, c)


def exp(b: ir.IRBuilder, x):
    hi, lo = 88.72283905206835, -87.33654475
    xc = _sel(b, b.fcmp_ordered(">", x, _c(x, hi)), _c(x, hi), x)
    xc = _sel(b, b.fcmp_ordered("<", xc, _c(x, lo)), _c(x, lo), xc)
    fx = _floor(b, _fma(b, xc, _c(x, 1.44269504088896341), _c(x, 0.5)))
    r = b.fsub(xc, b.fmul(fx, _c(x, 0.693359375)))
    r = b.fsub(r, b.fmul(fx, _c(x, -2.12194440e-4)))
    z = b.fmul(r, r, flags=FM)
    y = _poly(b, r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                     1.6666665459e-1, 5.0000001201e-1])
    y = b.fadd(b.fadd(b.fmul(y, z, flags=FM), r, flags=FM), _c(x, 1.0), flags=FM)
    n = b.fptosi(fx, _ity(x))
    bits = b.shl(b.add(n, _like(x, I32, 126)), _like(x, I32, 23))
    out = b.fmul(b.fmul(y, _c(x, 2.0)), b.bitcast(bits, x.type))
    out = _sel(b, b.fcmp_ordered(">", x, _c(x, hi)), _c(x, float("inf")), out)
    out = _sel(b, b.fcmp_ordered("<", x, _c(x, lo)), _c(x, 0.0), out)
    return _sel(b, b.fcmp_unordered("uno", x, x), x, out)


def log(b: ir.IRBuilder, x):
    tiny = b.fcmp_ordered("<", x, _c(x, 1.17549435e-38))
    xs = _sel(b, tiny, b.fmul(x, _c(x, 8388608.0)), x)  # denormals: scale by 2^23
    bits = b.bitcast(xs, _ity(x))
    e = b.sub(b.lshr(bits, _like(x, I32, 23)), _like(x, I32, 126))
    m = b.bitcast(b.or_(b.and_(bits, _like(x, I32, 0x807FFFFF)), _like(x, I32, 0x3F000000)), x.type)
    ef = b.sitofp(e, x.type)
    ef = _sel(b, tiny, b.fsub(ef, _c(x, 23.0)), ef)
    small = b.fcmp_ordered("<", m, _c(x, 0.707106781186547524))
    ef = _sel(b, small, b.fsub(ef, _c(x, 1.0)), ef)
    m = _sel(b, small, b.fadd(m, m), m)
    r = b.fsub(m, _c(x, 1.0))
    z = b.fmul(r, r, flags=FM)
    y = _poly(b, r, [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                     1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                     3.3333331174e-1])
    y = b.fmul(b.fmul(y, r, flags=FM), z, flags=FM)
    y = _fma(b, ef, _c(x, -2.12194440e-4), y)
    y = _fma(b, z, _c(x, -0.5), y)
    out = b.fadd(b.fadd(r, y, flags=FM), b.fmul(ef, _c(x, 0.693359375), flags=FM), flags=FM)
    out = _sel(b, b.fcmp_ordered("==", x, _c(x, float("inf"))), x, out)
    out = _sel(b, b.fcmp_ordered("==", x, _c(x, 0.0)), _c(x, float("-inf")), out)
    out = _sel(b, b.fcmp_ordered("<", x, _c(x, 0.0)), _c(x, float("nan")), out)
    return _sel(b, b.fcmp_unordered("uno", x, x), x, out)


def tanh(b: ir.IRBuilder, x):
    ax = intrinsic(b, "fabs", x)
    z = b.fmul(x, x, flags=FM)
    p = _poly(b, z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
                     -3.33332819422e-1])
    small = _fma(b, b.fmul(p, z, flags=FM), x, x)
    e = exp(b, b.fmul(ax, _c(x, 2.0)))
    big = b.fsub(_c(x, 1.0), b.fdiv(_c(x, 2.0), b.fadd(e, _c(x, 1.0))))
    sign = intrinsic(b, "copysign", big, x)
    return _sel(b, b.fcmp_ordered("<", ax, _c(x, 0.625)), small, sign)


def sqrt(b: ir.IRBuilder, x):
    return intrinsic(b, "sqrt", x)


#: pi/2 as P1 + P2 + P3: P1 and P2 have 29 significant bits, so j * P1 and j * P2 are exact
#: in double for integers |j| < 2**24; P3 is the rest, rounded
_PIO2 = (float.fromhex("0x1.921fb54000000p+0"), float.fromhex("0x1.10b4611000000p-30"),
         float.fromhex("0x1.4c4c6628b80dcp-59"))
_TWO_OVER_PI = 0.6366197723675814
#: above this |x| (and for inf and NaN) sin and cos are libm's
TRIG_REDUCE_MAX = 2.0 ** 24
_SIN = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1]
_COS = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2]


def _like_type(x, t_scalar):
    return ir.VectorType(t_scalar, x.type.count) if isinstance(x.type, ir.VectorType) else t_scalar


def _any(b, cond):
    """Whether any lane of an i1 or <N x i1> value is set (an i1)."""
    if not isinstance(cond.type, ir.VectorType):
        return cond
    n = cond.type.count
    return b.icmp_unsigned("!=", b.bitcast(cond, ir.IntType(n)), ir.Constant(ir.IntType(n), 0))


def _sin_cos(b: ir.IRBuilder, x, quarter: int, libm: str):
    """sin(x + quarter * pi/2): see the module docstring."""
    big = b.fcmp_unordered(">", intrinsic(b, "fabs", x), _c(x, TRIG_REDUCE_MAX))  # NaN too
    xd = b.fpext(_sel(b, big, _c(x, 0.0), x), _like_type(x, F64))
    jd = b.fmul(xd, _like(xd, F64, _TWO_OVER_PI))
    half = _sel(b, b.fcmp_ordered("<", jd, _like(xd, F64, 0.0)), _like(xd, F64, -0.5), _like(xd, F64, 0.5))
    j = b.fptosi(b.fadd(jd, half), _ity(x))  # round half away from zero
    jf = b.sitofp(j, xd.type)
    r = xd  # no fast-math flags: the Cody-Waite steps must not be reassociated
    for p in _PIO2:
        r = b.fsub(r, b.fmul(jf, _like(xd, F64, p)))
    r = b.fptrunc(r, x.type)
    z = b.fmul(r, r, flags=FM)
    s = _fma(b, b.fmul(_poly(b, z, _SIN), z, flags=FM), r, r)
    c = b.fadd(b.fsub(b.fmul(b.fmul(_poly(b, z, _COS), z, flags=FM), z, flags=FM),
                      b.fmul(z, _c(x, 0.5), flags=FM), flags=FM), _c(x, 1.0), flags=FM)
    q = b.add(j, _like(x, I32, quarter))
    zero = _like(x, I32, 0)
    out = _sel(b, b.icmp_signed("!=", b.and_(q, _like(x, I32, 1)), zero), c, s)
    fast = _sel(b, b.icmp_signed("!=", b.and_(q, _like(x, I32, 2)), zero), b.fneg(out), out)
    before = b.block
    with b.if_then(_any(b, big), likely=False):
        slow = _sel(b, big, intrinsic(b, libm, x), fast)
        slow_end = b.block
    phi = b.phi(x.type)
    phi.add_incoming(fast, before)
    phi.add_incoming(slow, slow_end)
    return phi


def sin(b: ir.IRBuilder, x):
    return _sin_cos(b, x, 0, "sin")


def cos(b: ir.IRBuilder, x):
    return _sin_cos(b, x, 1, "cos")


def pow(b: ir.IRBuilder, x, y):  # noqa: A001
    """x ** y like C's powf: exp(y*log|x|), signed for negative x and odd integer y, NaN for
    negative x and non-integer y, 1 when y == 0 or x == 1."""
    r = exp(b, b.fmul(y, log(b, intrinsic(b, "fabs", x)), flags=FM))
    fy = _floor(b, y)
    isint = b.fcmp_ordered("==", fy, y)
    half = b.fmul(y, _c(y, 0.5))
    odd = b.and_(isint, b.fcmp_unordered("!=", _floor(b, half), half))
    neg = b.fcmp_ordered("<", x, _c(x, 0.0))
    r = _sel(b, b.and_(neg, odd), b.fneg(r), r)
    finite = b.fcmp_ordered("!=", x, _c(x, float("-inf")))
    r = _sel(b, b.and_(b.and_(neg, finite), b.not_(isint)), _c(x, float("nan")), r)
    one = b.or_(b.fcmp_ordered("==", y, _c(y, 0.0)), b.fcmp_ordered("==", x, _c(x, 1.0)))
    return _sel(b, one, _c(x, 1.0), r)
