"""Hand-written IR graphs with correct types, shared by the text-format and verifier tests."""

ELEMENTWISE = '''graph @elementwise {
  %0 = input() {name="x", role="arg"} : f32[4,3] cpu
  %1 = input() {name="modules.0.weight", role="param"} : f32[4,3] cpu
  %2 = EWiseAdd(%0, %1) : f32[4,3] cpu  # model.py:3
  %3 = EWiseMul(%2, %1) : f32[4,3] cpu  # model.py:4
  %4 = EWiseDiv(%3, %0) : f32[4,3] cpu
  %5 = EWisePow(%4, %1) : f32[4,3] cpu
  %6 = AddScalar(%5) {scalar=-0.5} : f32[4,3] cpu
  %7 = MulScalar(%6) {scalar=1e-07} : f32[4,3] cpu
  %8 = DivScalar(%7) {scalar=3} : f32[4,3] cpu
  %9 = PowerScalar(%8) {scalar=2} : f32[4,3] cpu
  %10 = Negate(%9) : f32[4,3] cpu
  %11 = Log(%10) : f32[4,3] cpu
  %12 = Exp(%11) : f32[4,3] cpu
  %13 = Tanh(%12) : f32[4,3] cpu
  %14 = ReLU(%13) : f32[4,3] cpu
  %15 = Sigmoid(%14) : f32[4,3] cpu
  %16 = Compare(%15, %0) {cmp="gt", scalar=None} : f32[4,3] cpu
  %17 = Compare(%15) {cmp="le", scalar=0.0} : f32[4,3] cpu
  %18 = Where(%16, %15, %17) : f32[4,3] cpu
  %19 = AddScalar(%18) {scalar=inf} : f32[4,3] cpu
  %20 = MulScalar(%19) {scalar=-inf} : f32[4,3] cpu
  %21 = AddScalar(%20) {scalar=1.5e+300} : f32[4,3] cpu
  %22 = MulScalar(%21) {scalar=-2.5e-320} : f32[4,3] cpu
  %23 = AddScalar(%22) {scalar=0.1} : f32[4,3] cpu
  %24 = Summation(%23) {axes=None} : f32[] cpu
  %25 = Summation(%23) {axes=1} : f32[4] cpu
  %26 = Max(%23) {axes=(0, 1)} : f32[] cpu
  %27 = Max(%23) {axes=(0,)} : f32[3] cpu
  %28 = LogSumExp(%23) {axes=(1,)} : f32[4] cpu
  %29 = Argmax(%23) {axis=-1} : f32[4] cpu
  %30 = LogSoftmax(%23) : f32[4,3] cpu
  return %24, %25, %26, %27, %28, %29, %30
}
'''

SHAPES = '''graph @shapes {
  %0 = input() {name="x", role="arg"} : f32[2,3,4] cpu  # data.py:1
  %1 = Reshape(%0) {shape=(6, 4)} : f32[6,4] cpu
  %2 = Reshape(%1) {shape=(-1,)} : f32[24] cpu
  %3 = Transpose(%0) {axes=None} : f32[2,4,3] cpu
  %4 = Transpose(%0) {axes=(0, 1)} : f32[3,2,4] cpu
  %5 = Permute(%0) {axes=(2, 0, 1)} : f32[4,2,3] cpu
  %6 = BroadcastTo(%1) {shape=(5, 6, 4)} : f32[5,6,4] cpu
  %7 = GetItem(%0) {slices=((0, 2, 1), (1, 3, 1), (0, 4, 2))} : f32[2,2,2] cpu
  %8 = UnSlice(%7) {shape=(2, 3, 4), slices=((0, 2, 1), (1, 3, 1), (0, 4, 2))} : f32[2,3,4] cpu
  %9 = Flip(%0) {axes=(0, 2)} : f32[2,3,4] cpu
  %10 = Dilate(%0) {axes=(1,), dilation=2} : f32[2,9,4] cpu
  %11 = UnDilate(%10) {axes=(1,), dilation=2} : f32[2,3,4] cpu
  %12 = const() {value=0.0} : f32[] cpu
  %13 = BroadcastTo(%12) {shape=(2, 3, 4)} : f32[2,3,4] cpu
  %14 = Reshape(%12) {shape=()} : f32[] cpu
  %15 = input() {name="table", role="param"} : f32[10,8] cpu
  %16 = input() {name="ids", role="arg"} : i64[5] cpu
  %17 = Gather(%15, %16) : f32[5,8] cpu
  %18 = IndexAdd(%17, %16) {num_rows=10} : f32[10,8] cpu
  %19 = ToDevice(%18) {device="cpu"} : f32[10,8] cpu
  %20 = input() {name="lr", role="hyper"} : f64[] cpu
  %21 = input() {name="running_mean", role="state"} : f32[8] cpu
  %22 = input() {name="mask", role="arg"} : bool[2,2] cpu
  return %2, %3, %4, %5, %6, %8, %9, %11, %13, %14, %19
}
'''

TUPLES = '''graph @tuples_and_linalg {
  %0 = input() {name="x", role="arg"} : f32[3,4] cpu
  %1 = Split(%0) {axis=0} : (f32[4] cpu, f32[4] cpu, f32[4] cpu)  # model.py:20
  %2 = TupleGetItem(%1) {index=1} : f32[4] cpu
  %3 = MakeTensorTuple(%2, %2) : (f32[4] cpu, f32[4] cpu)
  %4 = Stack(%3) {axis=1} : f32[4,2] cpu
  %5 = Concat(%1) {axis=0} : f32[12] cpu
  %6 = MakeTensorTuple(%2) : (f32[4] cpu)
  %7 = MakeTensorTuple() : ()
  %8 = TupleGetItem(%1) {index=-1} : f32[4] cpu
  %9 = input() {name="img", role="arg"} : f32[2,8,8,3] cpu
  %10 = input() {name="conv.weight", role="param"} : f32[3,3,3,16] cpu
  %11 = Conv(%9, %10) {padding=1, stride=2} : f32[2,4,4,16] cpu  # model.py:31
  %12 = MatMul(%0, %4) : f32[3,2] cpu
  %13 = input() {name="batch", role="arg"} : f32[5,3,4] cpu
  %14 = MatMul(%13, %4) : f32[5,3,2] cpu
  %15 = const() {value=((1.0, -2.5), (3, 4e-10))} : f32[2,2] cpu
  %16 = const() {value=(((True,), (False,)),)} : bool[1,2,1] cpu
  %17 = Summation(%14) {axes=None} : f32[] cpu
  %18 = grad(%17, %0, %10) : (f32[3,4] cpu, f32[3,3,3,16] cpu)  # train.py:7
  return %11, %12, %15, %16, %17, %18
}
'''

#: an empty graph and a graph with non-contiguous ids, escapes in strings and odd names
ODDS = '''graph @<lambda> {
  return
}
graph @Model.forward {
  %7 = input() {name="we\\"ird\\\\ name\\n\\t\\x01é", role="arg"} : f32[] cuda  # /tmp/dir with space/f.py:120
  %3 = AddScalar(%7) {scalar=2.0} : f32[] cuda
  return %3, %7, %3
}
'''

ALL = [ELEMENTWISE, SHAPES, TUPLES]
