"""The CPU program builder: a compiled graph as typed steps of backends/cpu/program.cc
(`steps.py`), built by `program.build_cpu_program` (GEMM and conv steps in `gemm.py`) on the
target-neutral walk of `codegen/program.py`; `needle.runtime.native` loads and runs it."""
from .program import CpuBuilder, NativeUnsupported, UnsafeProgram, build_cpu_program
from .steps import CpuProgram

__all__ = ["build_cpu_program", "CpuBuilder", "CpuProgram", "NativeUnsupported", "UnsafeProgram"]
