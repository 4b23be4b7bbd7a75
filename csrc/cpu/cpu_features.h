// What the running CPU can do, for kernels that pick an AVX-512 or a portable row loop at run time.
#pragma once

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
// AVX2 CPU has it.
inline bool has_f16c() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("f16c");
  return ok;
#else
  return false;
#endif
}

}  // namespace pyllmops::cpu
