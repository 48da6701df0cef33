// The CPU loops for AVX2 + FMA + F16C: 8-wide float32 vectors, float16 through vcvtph2ps / vcvtps2ph.
#include "step_cpu.h"

#if FASTADV_CPU_X86_BUILDS
#define FASTADV_CPU_TARGET __attribute__((target("avx2,fma,f16c")))
#define FASTADV_CPU_HALF_LANES 8
#define FASTADV_CPU_LOOPS cpu_loops_avx2
#include "step_cpu_loops.h"
#endif
