// Helpers shared by the CPU kernels: exact widening to double and 8-element loads as two
// vectors of 4 doubles (GCC / Clang vector extensions: 2 SSE2 or 1 AVX register each). Kernels
// written in them vectorise without -ffast-math or -march flags, and add in a fixed order.
#pragma once

#include <cstdint>
#include <cstring>

namespace pluginedit {
namespace simd {

// Exact widening: fp16/bf16 through float (their only arithmetic type), fp32 and fp64 directly
// (a detour through float would round fp64 inputs).
template <typename T>
inline double as_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
inline double as_double<double>(double v) {
  return v;
}

// 4 doubles as two native 16-byte vectors (GCC / Clang vector extensions: SSE2 on x86-64, NEON
// on arm64). A 32-byte vector type instead is lowered through the stack without AVX flags; these
// stay in registers. Loops written in them vectorise where the auto-vectoriser leaves an 8-wide
// body scalar, and add in the written order (no -ffast-math reassociation).
typedef double d2 __attribute__((vector_size(16)));
typedef float f4 __attribute__((vector_size(16)));

struct d4 {
  d2 lo, hi;
};
inline d4 operator+(d4 a, d4 b) { return {a.lo + b.lo, a.hi + b.hi}; }
inline d4 operator*(d4 a, d4 b) { return {a.lo * b.lo, a.hi * b.hi}; }
inline d4& operator+=(d4& a, d4 b) {
  a.lo += b.lo;
  a.hi += b.hi;
  return a;
}
inline double hsum(d4 v) { return (v.lo[0] + v.lo[1]) + (v.hi[0] + v.hi[1]); }

inline d4 load_d4(const double* p) {
  d4 v;
  std::memcpy(&v.lo, p, sizeof v.lo);
  std::memcpy(&v.hi, p + 2, sizeof v.hi);
  return v;
}
inline void store_d4(double* p, d4 v) {
  std::memcpy(p, &v.lo, sizeof v.lo);
  std::memcpy(p + 2, &v.hi, sizeof v.hi);
}

inline d4 widen(f4 a) {  // exact: every float is a double
  return {d2{static_cast<double>(a[0]), static_cast<double>(a[1])},
          d2{static_cast<double>(a[2]), static_cast<double>(a[3])}};
}

// 8 elements of x as two f4 (exact for fp32/fp16/bf16)
template <typename T>
inline void load_f4x2(const T* p, f4& a, f4& b) {
  for (int i = 0; i < 4; ++i) {
    a[i] = static_cast<float>(p[i]);
    b[i] = static_cast<float>(p[4 + i]);
  }
}
template <>
inline void load_f4x2<float>(const float* p, f4& a, f4& b) {
  std::memcpy(&a, p, sizeof a);
  std::memcpy(&b, p + 4, sizeof b);
}

// 8 elements of x as two d4 (exact widening)
template <typename T>
inline void load8(const T* p, d4& lo, d4& hi) {
  f4 a, b;
  for (int i = 0; i < 4; ++i) {
    a[i] = static_cast<float>(p[i]);
    b[i] = static_cast<float>(p[4 + i]);
  }
  lo = widen(a);
  hi = widen(b);
}
template <>
inline void load8<float>(const float* p, d4& lo, d4& hi) {
  f4 a, b;
  std::memcpy(&a, p, sizeof a);
  std::memcpy(&b, p + 4, sizeof b);
  lo = widen(a);
  hi = widen(b);
}
template <>
inline void load8<double>(const double* p, d4& lo, d4& hi) {
  lo = load_d4(p);
  hi = load_d4(p + 4);
}

}  // namespace simd
}  // namespace pluginedit
