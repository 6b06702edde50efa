// The kernels for every CPU the module is built for (x86-64-v2 on x86): kernels_table.h.
#define NEEDLE_ISA baseline
#include "kernels_table.h"
