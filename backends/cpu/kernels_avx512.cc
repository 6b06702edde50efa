// The kernels for CPUs with AVX-512 F, VL, BW and DQ (setup.py adds those flags to AVX2's):
// kernels_table.h.
#define NEEDLE_ISA avx512
#include "kernels_table.h"
