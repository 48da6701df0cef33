// The rounding rule's generic expression (csrc/step_math.h, bits_within_budget_lanes) at 16 lanes, the
// AVX-512 build's width, against its scalar form on bfloat16 patterns near the ball's edge, zeros,
// subnormals and NaN. GCC lowers 64-byte vectors to the ISA it compiles for, so any x86-64 host runs
// it (tests/ops/test_cpu_builds.py builds it with -mavx2 where the CPU has AVX2, else with SSE2).
#include <cstdio>
#include <cstring>
#include <random>
#include "step_math.h"
typedef float F16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));
static float f(uint32_t w) { float v; std::memcpy(&v, &w, 4); return v; }
static uint32_t bf_round(float y) { uint32_t w; std::memcpy(&w, &y, 4); return y != y ? 0x7FC0u : (w + 0x7FFFu + ((w >> 16) & 1u)) >> 16; }
int main() {
  std::mt19937 gen(1);
  long bad = 0, n = 0;
  for (int it = 0; it < 400000; ++it) {
    F16 y, x, lim, rv; U16 bits;
    for (int l = 0; l < 16; ++l) {
      uint32_t xb = gen() & 0xFFFFu;  // a bfloat16 x (representable)
      if (gen() % 5 == 0) xb &= 0x8003u;  // zeros and subnormals
      x[l] = f(xb << 16);
      float eps = f((gen() % 120 + 60) << 23) * (1 + (gen() % 1000) / 1000.f);
      lim[l] = gen() % 4 == 0 ? 0.f : eps;
      float sgn = gen() & 1 ? 1.f : -1.f;
      y[l] = gen() % 7 == 0 ? x[l] - sgn * 1e-44f : x[l] + sgn * eps;
      if (gen() % 50 == 0) y[l] = f(0x7FC00000u);
      bits[l] = bf_round(y[l]);
      rv[l] = f(bits[l] << 16);
    }
    const U16 out = fastadv::bits_within_budget_lanes(bits, rv, y, x, lim);
    for (int l = 0; l < 16; ++l, ++n) {
      const uint16_t s = fastadv::bits_within_budget(static_cast<uint16_t>(bits[l]), rv[l], y[l], x[l], lim[l]);
      bad += s != out[l];
    }
  }
  std::printf("16 lanes vs scalar: %ld of %ld differ\n", bad, n);
  return bad != 0;
}
