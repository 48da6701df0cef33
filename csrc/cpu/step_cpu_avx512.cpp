// The CPU loops for AVX-512 (F, BW, VL, DQ, with AVX2, FMA and F16C): 16-wide float32 vectors,
// float16 through the 512-bit vcvtph2ps / vcvtps2ph.
#include "step_cpu.h"

#if FASTADV_CPU_X86_BUILDS
#define FASTADV_CPU_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")))
#define FASTADV_CPU_HALF_LANES 16
#define FASTADV_CPU_LOOPS cpu_loops_avx512
#include "step_cpu_loops.h"
#endif
