// Picks the kernel table (kernels.h) once, at import: the widest instruction set that was
// built and that this CPU has (cpuid through __builtin_cpu_supports, which also checks
// that the OS saves the wider registers), or the one NEEDLE_CPU_ISA names.
#include <cstdlib>
#include <string>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace needle {
namespace cpu {

namespace {

struct Isa {
  const char* name;
  const Kernels* table;
  bool (*supported)();
};

#if defined(__x86_64__) || defined(__i386__)
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
}
#endif

// the instruction sets built, narrowest first (setup.py defines NEEDLE_KERNELS_*)
const std::vector<Isa>& built() {
  static const std::vector<Isa> isas = {
      {"baseline", &baseline::table, [] { return true; }},
#ifdef NEEDLE_KERNELS_AVX2
      {"avx2", &avx2::table, has_avx2},
#endif
#ifdef NEEDLE_KERNELS_AVX512
      {"avx512", &avx512::table, has_avx512},
#endif
  };
  return isas;
}

std::vector<std::string> usable() {
  std::vector<std::string> names;
  for (const Isa& isa : built())
    if (isa.supported()) names.push_back(isa.name);
  return names;
}

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

const Isa* g_isa = nullptr;

// NEEDLE_CPU_ISA's choice, else the widest usable; a ValueError names what is possible
const Isa* pick() {
  const char* want = std::getenv("NEEDLE_CPU_ISA");
  const Isa* best = nullptr;
  for (const Isa& isa : built()) {
    if (want && *want && isa.name == std::string(want)) {
      if (!isa.supported())
        value_error(std::string("NEEDLE_CPU_ISA=") + want + ": this CPU lacks it (usable here: " + joined(usable()) +
                    ")");
      return &isa;
    }
    if (isa.supported()) best = &isa;
  }
  if (want && *want)
    value_error(std::string("NEEDLE_CPU_ISA=") + want +
                " is not an instruction set this module was built for (usable here: " + joined(usable()) + ")");
  return best;
}

}  // namespace

const Kernels& kernels() { return *g_isa->table; }

void register_dispatch(py::module_& m) {
  g_isa = pick();
  m.def("cpu_isa", [] { return std::string(g_isa->name); },
        "the instruction set of the kernels in use (baseline, avx2, avx512; NEEDLE_CPU_ISA picks one)");
  m.def("cpu_isas", &usable, "the instruction sets built into this module that this CPU can run, narrowest first");
}

}  // namespace cpu
}  // namespace needle
