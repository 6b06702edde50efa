// The kernels for CPUs with AVX2 and FMA (setup.py adds -mavx2 -mfma): kernels_table.h.
#define NEEDLE_ISA avx2
#include "kernels_table.h"
