// K2 on the CPU: per-class power sums of witness features, one read of the activation tensor.
//
// Pass 1 reduces every (sample, channel) over space to s = sum x and q = sum x^2 into double
// (fourth powers of s are formed later, so s must carry full precision): NCHW rows in float
// blocks of 16 folded into double (row_sums: float's SIMD rate, at the memory bandwidth),
// channels_last in double; each in a fixed order, independent of the thread count.
// Pass 2 applies the witness transform (s - shift, powers up to 4, exp(-gamma * sqrt(q))) and adds
// per-sample rows into the [K, C, 6] state. It is parallel over channels and walks samples in
// order, so the result is deterministic for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace pluginedit {

namespace {

using namespace simd;

// Spatial sum and sum of squares of one contiguous row of L elements. fp32/fp16/bf16: blocks of
// 16 elements are summed in float in 8 lanes (4-wide float vectors: twice the doubles' rate),
// and each block's partials are added into double accumulators, so at most 2 terms meet in
// float before the fold (relative error ~2^-23 per block, float64 across blocks); the last
// L % 16 elements and fp64 rows are summed in double. A fixed order: deterministic.
template <typename T>
inline void row_sums(const T* p, int64_t L, double& s_out, double& q_out) {
  constexpr int64_t B = 16;
  d4 sa = {}, qa = {};
  int64_t l = 0;
  for (; l + B <= L; l += B) {
    f4 a0, a1, b0, b1;
    load_f4x2(p + l, a0, a1);
    b0 = a0 * a0;
    b1 = a1 * a1;
    f4 v0, v1;
    load_f4x2(p + l + 8, v0, v1);
    a0 += v0;
    a1 += v1;
    b0 += v0 * v0;
    b1 += v1 * v1;
    sa += widen(a0 + a1);
    qa += widen(b0 + b1);
  }
  double s = hsum(sa), q = hsum(qa);
  for (; l < L; ++l) {
    const double v = as_double(p[l]);
    s += v;
    q += v * v;
  }
  s_out = s;
  q_out = q;
}

template <>
inline void row_sums<double>(const double* p, int64_t L, double& s_out, double& q_out) {
  double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
  for (int64_t l = 0; l < L; ++l) {
    a += p[l];
    b += p[l] * p[l];
  }
  s_out = a;
  q_out = b;
}

// Rows of x are contiguous (NCHW): row (n, c) starts at n*sn + c*sc and has L elements.
template <typename T>
void reduce_rows(const T* x, int64_t N, int64_t C, int64_t L, int64_t sn, int64_t sc, double* s,
                 double* q) {
  // Grain: >= 64k elements per task, so small tensors run inline (waking threads costs more).
  at::parallel_for(0, N * C, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(L, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      row_sums<T>(x + (r / C) * sn + (r % C) * sc, L, s[r], q[r]);
  });
}

// Channels are contiguous (channels_last): element (n, c, l) is at n*sn + c + l*sl. Each task
// owns one sample and a block of channels and streams over space with the channel loop inside.
template <typename T>
void reduce_channels_last(const T* x, int64_t N, int64_t C, int64_t L, int64_t sn, int64_t sl,
                          double* s, double* q) {
  constexpr int64_t CB = 64;
  const int64_t nb = (C + CB - 1) / CB;
  at::parallel_for(0, N * nb, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(L * CB, 1)),
                   [&](int64_t begin, int64_t end) {
    double a[CB], b[CB];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nb, c0 = (t % nb) * CB, cw = std::min(CB, C - c0);
      for (int64_t j = 0; j < cw; ++j) a[j] = b[j] = 0.0;
      const T* base = x + n * sn + c0;
      for (int64_t l = 0; l < L; ++l) {
        const T* p = base + l * sl;
#pragma omp simd
        for (int64_t j = 0; j < cw; ++j) {
          const double v = as_double(p[j]);
          a[j] += v;
          b[j] += v * v;
        }
      }
      for (int64_t j = 0; j < cw; ++j) {
        s[n * C + c0 + j] = a[j];
        q[n * C + c0 + j] = b[j];
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> class_moments_cpu(const at::Tensor& x_in, const at::Tensor& labels_in,
                                                     int64_t num_classes, double gamma,
                                                     const c10::optional<at::Tensor>& shift) {
  TORCH_CHECK(x_in.dim() >= 2, "class_moments: x must be [N, C, *spatial]");
  TORCH_CHECK(num_classes >= 1, "class_moments: num_classes must be >= 1");
  const int64_t N = x_in.size(0), C = x_in.size(1), K = num_classes;
  at::Tensor labels = labels_in.to(at::kLong).contiguous();
  TORCH_CHECK(labels.numel() == N, "class_moments: labels must have N entries");
  auto opts = x_in.options().dtype(at::kDouble);
  at::Tensor counts = at::zeros({K}, opts), sums = at::zeros({K, C, 6}, opts);
  if (N == 0) return {counts, sums};
  const int64_t* lab = labels.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    TORCH_CHECK(lab[n] >= 0 && lab[n] < K, "class_moments: label out of range [0, K)");

  // [N, C, L] view; reshape keeps channels_last a view (strides (L*C, 1, C)).
  at::Tensor x = x_in.reshape({N, C, -1});
  const int64_t L = x.size(2);
  if (!(x.stride(2) == 1 || L == 1) && !(x.stride(1) == 1)) x = x.contiguous();
  std::vector<double> s(N * C), q(N * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "class_moments_cpu", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    if (x.stride(2) == 1 || L == 1)
      reduce_rows<scalar_t>(p, N, C, L, x.stride(0), x.stride(1), s.data(), q.data());
    else
      reduce_channels_last<scalar_t>(p, N, C, L, x.stride(0), x.stride(2), s.data(), q.data());
  });

  std::vector<double> sh(C, 0.0);
  if (shift.has_value() && shift->defined()) {
    at::Tensor t = shift->to(at::kCPU, at::kDouble).contiguous();
    TORCH_CHECK(t.numel() == C, "class_moments: shift must have C entries");
    std::copy(t.data_ptr<double>(), t.data_ptr<double>() + C, sh.begin());
  }
  double* out = sums.data_ptr<double>();
  // The transform is light (N * C rows): only worth threads when there are many rows.
  at::parallel_for(0, C, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(N, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      for (int64_t n = 0; n < N; ++n) {
        const double v = s[n * C + c] - sh[c], v2 = v * v;
        const double e = std::exp(-gamma * std::sqrt(q[n * C + c]));
        double* o = out + (lab[n] * C + c) * 6;
        o[0] += v; o[1] += v2; o[2] += v2 * v; o[3] += v2 * v2; o[4] += e; o[5] += e * e;
      }
  });
  double* cnt = counts.data_ptr<double>();
  for (int64_t n = 0; n < N; ++n) cnt[lab[n]] += 1.0;
  return {counts, sums};
}

}  // namespace pluginedit
