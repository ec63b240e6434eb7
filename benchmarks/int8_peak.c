/* The int8 multiply-accumulate peak of one core: independent chains of the instruction an int8
 * GEMM is built from (AVX512-VNNI vpdpbusd; without it, AVX2's vpmaddubsw + vpmaddwd + vpaddd),
 * printed as GMAC/s. Built and run by benchmarks/layers.py; not part of quantcore. */
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f,avx512vnni"))) static double vnni(long iters) {
  double start = now();
  __asm__ volatile(
      "vpternlogd $0xff, %%zmm30, %%zmm30, %%zmm30\n"
      "vpternlogd $0xff, %%zmm31, %%zmm31, %%zmm31\n"
      "1:\n"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm0\n vpdpbusd %%zmm30, %%zmm31, %%zmm1\n"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm2\n vpdpbusd %%zmm30, %%zmm31, %%zmm3\n"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm4\n vpdpbusd %%zmm30, %%zmm31, %%zmm5\n"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm6\n vpdpbusd %%zmm30, %%zmm31, %%zmm7\n"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm8\n vpdpbusd %%zmm30, %%zmm31, %%zmm9\n"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm10\n vpdpbusd %%zmm30, %%zmm31, %%zmm11\n"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm12\n vpdpbusd %%zmm30, %%zmm31, %%zmm13\n"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm14\n vpdpbusd %%zmm30, %%zmm31, %%zmm15\n"
      "dec %0\n jnz 1b\n"
      : "+r"(iters)
      :
      : "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9",
        "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm30", "zmm31", "cc");
  return now() - start;  /* 16 instructions x 64 MACs per iteration */
}

__attribute__((target("avx2"))) static double avx2(long iters) {
  double start = now();
  __asm__ volatile(
      "vpcmpeqd %%ymm14, %%ymm14, %%ymm14\n"
      "vpabsb %%ymm14, %%ymm14\n" /* bytes of 1 */
      "vpcmpeqd %%ymm15, %%ymm15, %%ymm15\n"
      "vpsrlw $15, %%ymm15, %%ymm15\n" /* int16 ones for vpmaddwd */
      "1:\n"
      "vpmaddubsw %%ymm14, %%ymm14, %%ymm0\n vpmaddubsw %%ymm14, %%ymm14, %%ymm1\n"
      "vpmaddubsw %%ymm14, %%ymm14, %%ymm2\n vpmaddubsw %%ymm14, %%ymm14, %%ymm3\n"
      "vpmaddwd %%ymm15, %%ymm0, %%ymm0\n vpmaddwd %%ymm15, %%ymm1, %%ymm1\n"
      "vpmaddwd %%ymm15, %%ymm2, %%ymm2\n vpmaddwd %%ymm15, %%ymm3, %%ymm3\n"
      "vpaddd %%ymm0, %%ymm4, %%ymm4\n vpaddd %%ymm1, %%ymm5, %%ymm5\n"
      "vpaddd %%ymm2, %%ymm6, %%ymm6\n vpaddd %%ymm3, %%ymm7, %%ymm7\n"
      "dec %0\n jnz 1b\n"
      : "+r"(iters)
      :
      : "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm14", "ymm15", "cc");
  return now() - start;  /* 4 chains x 32 MACs per iteration */
}

int main(int argc, char** argv) {
  const long iters = 20000000;
  double best = 1e30;
  /* "int8_peak avx2": the AVX2 peak on a CPU that has VNNI too */
  const int avx2_only = argc > 1 && strcmp(argv[1], "avx2") == 0;
  if (!avx2_only && __builtin_cpu_supports("avx512vnni")) {
    for (int round = 0; round < 5; ++round) {
      double t = vnni(iters);
      if (t < best) best = t;
    }
    printf("avx512-vnni %.1f\n", iters * 16.0 * 64.0 / best / 1e9);
  } else if (__builtin_cpu_supports("avx2")) {
    for (int round = 0; round < 5; ++round) {
      double t = avx2(iters);
      if (t < best) best = t;
    }
    printf("avx2 %.1f\n", iters * 4.0 * 32.0 / best / 1e9);
  } else {
    return 1;
  }
  return 0;
}
