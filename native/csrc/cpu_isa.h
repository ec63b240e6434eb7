// The widest x86 vector extension this CPU has that the kernels use, detected once.
#pragma once

namespace quantcore_native {

enum class Isa { kScalar, kAvx2, kAvx512 };

inline Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kScalar;
}

inline Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

}  // namespace quantcore_native
