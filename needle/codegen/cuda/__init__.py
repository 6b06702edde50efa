"""CUDA code generation for compiled graphs (no GPU needed to generate or to test).

    from needle.codegen.cuda import build_program, emulate_program
    prog = build_program(graph)            # fusion plan, schedule and memory plan computed if not given
    print(prog.source())                   # one translation unit: kernels + host entry
    outs = emulate_program(prog, inputs)   # every launch run on the CPU (numpy), checked

Modules: `gpu_ir` (kernels bound to a grid), `schedule` (LoopKernel -> GPU kernel),
`views` (expanded group subgraphs, the view walker), `templates` (tiled GEMM, implicit-GEMM
conv, RNG, scatter-add, pointwise copies), `program` (a graph as launches with arena
offsets), `render` (CUDA C), `emulate` (CPU emulation), `build` (nvcc, disk cache, loading).
"""
from .emulate import EmulationError, emulate_kernel, emulate_program
from .program import CudaCodegenError, CudaProgram, build_program
from .render import graph_symbol, render_kernel, render_program

__all__ = ["build_program", "CudaProgram", "CudaCodegenError", "emulate_program", "emulate_kernel",
           "EmulationError", "render_kernel", "render_program", "graph_symbol"]
