// The rounding rules' generic expressions (csrc/step_math.h: L-inf's bits_within_budget_lanes, L2's
// bits_toward_x_lanes) and their vector forms (bits_within_budget_vector, as the CPU loops apply it
// to 16-bit patterns and to bfloat16 patterns in the upper halves of the lanes; l2_budget_move_vector)
// at 16 lanes, the AVX-512 build's width, and at 8, the AVX2 build's, against the scalar forms on
// bfloat16 patterns near the ball's edge, zeros, subnormals and NaN. The vector forms differ by
// width (step_math.h's toward_x_move), so both widths run. GCC lowers 64-byte vectors to the ISA it
// compiles for, so any x86-64 host runs it (tests/ops/test_cpu_builds.py builds it with -mavx2 where
// the CPU has AVX2, else with SSE2).
#include <cstdio>
#include <cstring>
#include <random>
#include "step_math.h"
static float f(uint32_t w) { float v; std::memcpy(&v, &w, 4); return v; }
static uint32_t bf_round(float y) { uint32_t w; std::memcpy(&w, &y, 4); return y != y ? 0x7FC0u : (w + 0x7FFFu + ((w >> 16) & 1u)) >> 16; }

struct Counts {
  long generic = 0, vector = 0, upper = 0, l2_generic = 0, l2 = 0, n = 0, n_l2 = 0;
};

typedef float F16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));
typedef float F8 __attribute__((vector_size(32)));
typedef uint32_t U8 __attribute__((vector_size(32)));

template <typename F, typename U>
void check(std::mt19937& gen, Counts& c) {
  constexpr int kLanes = sizeof(F) / 4;
  F y, x, lim, rv;
  U bits;
  for (int l = 0; l < kLanes; ++l) {
    uint32_t xb = gen() & 0xFFFFu;  // a bfloat16 x (representable)
    if (gen() % 5 == 0) xb &= 0x8003u;  // zeros and subnormals
    x[l] = f(xb << 16);
    float eps = f((gen() % 120 + 60) << 23) * (1 + (gen() % 1000) / 1000.f);
    lim[l] = gen() % 4 == 0 ? 0.f : eps;
    float sgn = gen() & 1 ? 1.f : -1.f;
    y[l] = gen() % 7 == 0 ? x[l] - sgn * 1e-44f : x[l] + sgn * eps;
    // any float32 value: far from x, the float32 differences |rounded - x| and |y - x| can round to
    // one value, where L-inf's rule and L2's part ways
    if (gen() % 6 == 0) y[l] = f((gen() & 0x807FFFFFu) | (static_cast<uint32_t>(gen() % 254 + 1) << 23));
    if (gen() % 50 == 0) y[l] = f(0x7FC00000u);
    bits[l] = bf_round(y[l]);
    rv[l] = f(bits[l] << 16);
  }
  const U generic = fastadv::bits_within_budget_lanes(bits, rv, y, x, lim);
  const U vector = fastadv::bits_within_budget_vector(bits, rv, y, x, lim);
  const U upper = fastadv::bits_within_budget_vector(bits << 16, rv, y, x, lim, 0x10000u);
  const U l2_generic = fastadv::bits_toward_x_lanes(bits, rv, y, x);
  const U l2 = bits - reinterpret_cast<U>(fastadv::l2_budget_move_vector(rv, y, x));
  for (int l = 0; l < kLanes; ++l, ++c.n) {
    const uint16_t s = fastadv::bits_within_budget(static_cast<uint16_t>(bits[l]), rv[l], y[l], x[l], lim[l]);
    c.generic += s != generic[l];
    c.vector += s != (vector[l] & 0xFFFFu);
    c.upper += (static_cast<uint32_t>(s) << 16) != upper[l];
    if (lim[l] == 0.f) {
      const uint16_t s2 = fastadv::bits_toward_x(static_cast<uint16_t>(bits[l]), rv[l], y[l], x[l]);
      ++c.n_l2;
      c.l2_generic += s2 != l2_generic[l];
      c.l2 += s2 != (l2[l] & 0xFFFFu);
    }
  }
}

template <typename F, typename U>
long report(std::mt19937& gen) {
  constexpr int kLanes = sizeof(F) / 4;
  Counts c;
  for (int it = 0; it < 6400000 / kLanes; ++it) check<F, U>(gen, c);
  std::printf("%d lanes vs scalar: generic %ld, vector %ld, upper halves %ld of %ld differ; l2 generic %ld, "
              "l2 %ld of %ld differ\n",
              kLanes, c.generic, c.vector, c.upper, c.n, c.l2_generic, c.l2, c.n_l2);
  return c.generic + c.vector + c.upper + c.l2_generic + c.l2;
}

int main() {
  std::mt19937 gen(1);
  const long bad = report<F16, U16>(gen) + report<F8, U8>(gen);
  return bad != 0;
}
