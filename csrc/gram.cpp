// K3 on the CPU: G = sum p p^T and s = sum p over the rows p of a linear input, or over the
// im2col patch rows of a conv input (patch order (c, kh, kw), as F.unfold and conv weights).
// Conv patches are gathered a chunk of rows at a time straight into a row-major buffer (no full
// unfold, no transpose) and folded in with one fp32 GEMM per chunk. Returns float64 (G, s) (the
// op's contract), widened from the fp32 accumulators once at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <tuple>

namespace pluginedit {

namespace {

int64_t pick(at::IntArrayRef v, int i, int64_t dflt) {
  if (v.empty()) return dflt;
  return v.size() == 1 ? v[0] : v[i];
}

// Gather patch rows [r0, r0 + rows) of the (n, oh, ow)-ordered patch matrix into buf [rows, D].
template <typename T>
void gather(const T* x, int64_t r0, int64_t rows, int64_t C, int64_t H, int64_t W, int64_t Ho,
            int64_t Wo, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw, int64_t xs0, int64_t xs1, int64_t xs2, int64_t xs3, float* buf) {
  const int64_t D = C * kh * kw;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t m = r0 + r, n = m / (Ho * Wo), oh = (m / Wo) % Ho, ow = m % Wo;
      float* out = buf + r * D;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < kh; ++i) {
          const int64_t h = oh * sh - ph + i * dh;
          for (int64_t j = 0; j < kw; ++j) {
            const int64_t w = ow * sw - pw + j * dw;
            *out++ = (h >= 0 && h < H && w >= 0 && w < W)
                         ? static_cast<float>(x[n * xs0 + c * xs1 + h * xs2 + w * xs3])
                         : 0.0f;
          }
        }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gram_cpu(const at::Tensor& x, at::IntArrayRef kernel_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation) {
  auto f32 = x.options().dtype(at::kFloat), f64 = x.options().dtype(at::kDouble);
  if (kernel_size.empty()) {  // linear: rows are x[..., D]
    at::Tensor rows = x.reshape({-1, x.size(-1)}).to(at::kFloat);
    if (rows.size(0) == 0) {
      const int64_t D = rows.size(1);
      return {at::zeros({D, D}, f64), at::zeros({D}, f64)};
    }
    return {at::mm(rows.t(), rows).to(at::kDouble), rows.sum(0).to(at::kDouble)};
  }
  TORCH_CHECK(x.dim() == 4, "gram: conv input must be [N, C, H, W]");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t kh = pick(kernel_size, 0, 1), kw = pick(kernel_size, 1, 1);
  const int64_t sh = pick(stride, 0, 1), sw = pick(stride, 1, 1);
  const int64_t ph = pick(padding, 0, 0), pw = pick(padding, 1, 0);
  const int64_t dh = pick(dilation, 0, 1), dw = pick(dilation, 1, 1);
  const int64_t Ho = (H + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t Wo = (W + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  const int64_t D = C * kh * kw, M = N * std::max<int64_t>(Ho, 0) * std::max<int64_t>(Wo, 0);
  at::Tensor G = at::zeros({D, D}, f32), s = at::zeros({D}, f32);
  if (M == 0) return {G.to(at::kDouble), s.to(at::kDouble)};
  // ~16 MiB of patches per chunk: big enough for an efficient GEMM, small enough to stay in cache-ish.
  const int64_t chunk = std::max<int64_t>(64, (int64_t(4) << 20) / D);
  at::Tensor buf = at::empty({std::min(chunk, M), D}, f32);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gram_cpu", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    for (int64_t r0 = 0; r0 < M; r0 += chunk) {
      const int64_t rows = std::min(chunk, M - r0);
      at::Tensor P = buf.narrow(0, 0, rows);
      gather<scalar_t>(p, r0, rows, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, x.stride(0),
                       x.stride(1), x.stride(2), x.stride(3), P.data_ptr<float>());
      G.addmm_(P.t(), P);
      s.add_(P.sum(0));
    }
  });
  return {G.to(at::kDouble), s.to(at::kDouble)};
}

}  // namespace pluginedit
