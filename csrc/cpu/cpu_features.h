// What the running CPU can do, for kernels that pick an AVX-512 or a portable row loop at run time.
#pragma once

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace pyllmops::cpu {

// AVX-512 F + BW + VL: the subset the int8 quantize and W8A8 epilogue loops use (masked byte and
// 16-bit stores, 256-bit masked ops). Checked once per process.
inline bool has_avx512_bw_vl() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl");
  return ok;
#else
  return false;
#endif
}

// AVX2 + FMA: the 8-lane paths of the weight-only and decode kernels (CPUs without AVX-512).
inline bool has_avx2_fma() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// F16C: float16 <-> float32 conversions (vcvtph2ps / vcvtps2ph), for the float16 KV cache. Every
// AVX2 CPU has it. Read from CPUID leaf 1 (ECX bit 29) because clang before 15 rejects "f16c" in
// __builtin_cpu_supports; the AVX2 check carries the OS's YMM-state test that VEX code needs.
inline bool has_f16c() {
#if defined(__x86_64__)
  static const bool ok = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    return (ecx & bit_F16C) != 0 && __builtin_cpu_supports("avx2");
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace pyllmops::cpu
