"""CUDA code generation for compiled graphs (no GPU needed to generate or to test).

    from needle.codegen.cuda import build_program
    prog = build_program(graph)            # fusion plan, schedule and memory plan computed if not given
    print(prog.source())                   # one translation unit: kernels + host entry

Modules: `gpu_ir` (kernels bound to a grid), `schedule` (LoopKernel -> GPU kernel),
`views` (expanded group subgraphs, the view walker), `templates` (tiled GEMM, implicit-GEMM
conv, RNG, scatter-add, pointwise copies), `program` (a graph as launches with arena
offsets), `render` (CUDA C), `build` (nvcc, disk cache, loading). The tests run programs on
the CPU with the emulator in `tests/gpu_emulator` (a checkout's test tool, not shipped).
"""
from .program import CudaCodegenError, CudaProgram, build_program
from .render import graph_symbol, render_kernel, render_program

__all__ = ["build_program", "CudaProgram", "CudaCodegenError", "render_kernel", "render_program", "graph_symbol"]
