"""Code generation: loop IR, lowering of kernel subgraphs, LLVM / C renderers and the JIT.

    from needle.codegen import compile_kernel
    k = compile_kernel(subgraph)      # a standalone Graph: inputs = kernel arguments
    outs = k(x, y)                    # numpy float32 arrays in, list of arrays out
    print(k.c_source); print(k.llvm_ir)
"""
from .c_render import render_c
from .jit import Kernel, compile_kernel, compile_loop_kernel
from .lower import LoweringError, lower

__all__ = ["compile_kernel", "compile_loop_kernel", "Kernel", "lower", "render_c", "LoweringError"]
