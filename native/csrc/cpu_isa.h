// The widest x86 vector extension this CPU has that the kernels use, detected once.
// QUANTCORE_NATIVE_MAX_ISA=avx2 or =scalar caps it, so the narrower code paths run (and are
// tested) on a CPU that has more; any other value leaves the detection alone.
#pragma once

#include <cstdlib>
#include <cstring>

namespace quantcore_native {

enum class Isa { kScalar, kAvx2, kAvx512 };

inline Isa detect_isa() {
  __builtin_cpu_init();
  Isa found = Isa::kScalar;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    found = Isa::kAvx512;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    found = Isa::kAvx2;
  }
  const char* cap = std::getenv("QUANTCORE_NATIVE_MAX_ISA");
  if (cap != nullptr && std::strcmp(cap, "scalar") == 0) return Isa::kScalar;
  if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && found == Isa::kAvx512) return Isa::kAvx2;
  return found;
}

inline Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

inline const char* isa_name() {
  switch (isa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

}  // namespace quantcore_native
