// The CPU loops for any x86-64 (SSE2) or other CPU: float16 converted in portable code.
#define FASTADV_CPU_TARGET
#define FASTADV_CPU_HALF_LANES 0
#define FASTADV_CPU_LOOPS cpu_loops_baseline
#include "step_cpu_loops.h"
