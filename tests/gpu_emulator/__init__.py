"""Run GPU kernels (`needle.codegen.cuda.gpu_ir.GpuKernel`) and whole CUDA programs on the CPU
with numpy: a test tool, not part of the package.

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

Modules: `arith` (C integer arithmetic, the compiled RNG, index closures), `kernel` (one
launch: `KernelRun`, `emulate_kernel`), `program` (a `CudaProgram`'s launches on one
emulated memory: `emulate_program`), `check` (emulated values against the reference
interpreter: `check_program`). Not to be confused with `tests/cuda/emulator.py`, which builds
the eager `ndarray_backend_cuda` extension for the CPU.
"""
from .arith import uniform
from .check import check_program, group_scales, reference_values, relative_error, scaled_error
from .kernel import EmulationError, KernelRun, emulate_kernel
from .program import Memory, emulate_program

__all__ = ["EmulationError", "KernelRun", "Memory", "check_program", "emulate_kernel", "emulate_program",
           "group_scales", "reference_values", "relative_error", "scaled_error", "uniform"]
