// S1 on the CPU: per-class sums of activation maps (and of their squares) folded in place into
// the float64 state of ClassMaps, one read of the activations and one read + write of the state.
//
// The op pluginedit::class_maps_fold(sums, squares, x, labels, init) -> total (schema and
// reference in pluginedit/ops/class_maps.py). sums [K, C, L] float64; squares [K, C, L] (per
// pixel) or [K, C, 1] (per channel: summed over space too); x [N, C, *spatial]. Per class k the
// samples of k are walked in batch order, each element converted to double (exact from
// fp32/bf16/fp16) and added in double, so sums and per-pixel squares equal the reference bit for
// bit (the same additions in the same order). With ``init`` the state is fresh memory
// (torch.empty): it is written, never read (rows of absent classes are zeroed), which saves the
// zero fill and one read. Returns the batch's float64 total of x^2 (non-finite iff x has NaN/Inf:
// the statistic's finite check), summed in a fixed order: deterministic for any thread count.
//
// Work is split over blocks of channels (each task owns its channels' state rows entirely), and
// within a task over tiles of space that keep the accumulators in L1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace pluginedit {

namespace {

using namespace simd;

constexpr int64_t TILE = 512;  // elements per tile of a state row (a multiple of 8)

struct Geometry {
  int64_t K, C, L, sn, sc, sl;
  bool pixel_squares, init;
};

// One tile (w elements) of one (class, channel) state row from the class's m member rows
// (contiguous): s = (INIT ? 0 : s) + r_0 + r_1 + ... (state first, samples in batch order: the
// reference's additions), q likewise with squares (PIXEL), and the batch's squares added to 8
// per-lane partial sums (a fixed order: deterministic for any thread count). Chunks of 8 keep
// every accumulator in registers: one pass over the state.
template <typename T, bool INIT, bool PIXEL>
void fold_tile(const T* const* rows, int64_t m, int64_t w, double* s, double* q, double* part) {
  int64_t j0 = 0;
  const d4 zero = {};
  d4 t0 = load_d4(part), t1 = load_d4(part + 4);
  for (; j0 + 8 <= w; j0 += 8) {
    d4 a0 = INIT ? zero : load_d4(s + j0), a1 = INIT ? zero : load_d4(s + j0 + 4);
    d4 b0 = zero, b1 = zero;
    if (PIXEL && !INIT) {
      b0 = load_d4(q + j0);
      b1 = load_d4(q + j0 + 4);
    }
    for (int64_t r = 0; r < m; ++r) {
      d4 v0, v1;
      load8<T>(rows[r] + j0, v0, v1);
      const d4 u0 = v0 * v0, u1 = v1 * v1;
      a0 += v0;
      a1 += v1;
      b0 += u0;
      b1 += u1;
      t0 += u0;
      t1 += u1;
    }
    store_d4(s + j0, a0);
    store_d4(s + j0 + 4, a1);
    if (PIXEL) {
      store_d4(q + j0, b0);
      store_d4(q + j0 + 4, b1);
    }
  }
  store_d4(part, t0);
  store_d4(part + 4, t1);
  for (int64_t j = j0; j < w; ++j) {  // the tail (TILE is a multiple of 8: the row's last tile)
    double a = INIT ? 0.0 : s[j], b = (INIT || !PIXEL) ? 0.0 : q[j], t = 0.0;
    for (int64_t r = 0; r < m; ++r) {
      const double v = as_double(rows[r][j]);
      a += v;
      b += v * v;
      t += v * v;
    }
    s[j] = a;
    if (PIXEL) q[j] = b;
    part[j - j0] += t;
  }
}

template <typename T>
using TileFn = void (*)(const T* const*, int64_t, int64_t, double*, double*, double*);

template <typename T>
TileFn<T> pick(bool init, bool pixel) {
  if (init) return pixel ? fold_tile<T, true, true> : fold_tile<T, true, false>;
  return pixel ? fold_tile<T, false, true> : fold_tile<T, false, false>;
}

inline double combine(const double* part) {
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// The state rows of channels [c0, c1) (every class, every tile), tile by tile with the channels
// inside, so a channels_last tile's cache lines serve every channel of the block (its member
// rows are gathered into contiguous buffers first); adds each channel's x^2 to total[c - c0].
template <typename T>
void fold_block(const T* x, const Geometry& g, const std::vector<std::vector<int64_t>>& by_class,
                int64_t c0, int64_t c1, double* sums, double* squares, double* total) {
  const TileFn<T> tile = pick<T>(g.init, g.pixel_squares);
  const int64_t qlen = g.pixel_squares ? g.L : 1, nc = c1 - c0;
  std::vector<double> part(nc * 8);
  std::vector<const T*> rows;
  std::vector<T> gathered;
  for (int64_t k = 0; k < g.K; ++k) {
    const auto& members = by_class[k];
    const int64_t m = static_cast<int64_t>(members.size());
    if (m == 0) {
      if (g.init) {
        std::fill(sums + (k * g.C + c0) * g.L, sums + (k * g.C + c1) * g.L, 0.0);
        std::fill(squares + (k * g.C + c0) * qlen, squares + (k * g.C + c1) * qlen, 0.0);
      }
      continue;
    }
    std::fill(part.begin(), part.end(), 0.0);
    rows.resize(m);
    if (g.sl != 1) gathered.resize(m * TILE);
    for (int64_t l0 = 0; l0 < g.L; l0 += TILE) {
      const int64_t w = std::min(TILE, g.L - l0);
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = 0; r < m; ++r) {
          const T* p = x + members[r] * g.sn + c * g.sc + l0 * g.sl;
          if (g.sl == 1) {
            rows[r] = p;
            continue;
          }
          T* buf = gathered.data() + r * TILE;
          for (int64_t j = 0; j < w; ++j) buf[j] = p[j * g.sl];
          rows[r] = buf;
        }
        double* q = squares + (k * g.C + c) * qlen + (g.pixel_squares ? l0 : 0);
        tile(rows.data(), m, w, sums + (k * g.C + c) * g.L + l0, q, part.data() + (c - c0) * 8);
      }
    }
    for (int64_t c = c0; c < c1; ++c) {
      const double batch_sq = combine(part.data() + (c - c0) * 8);
      if (!g.pixel_squares) {
        double* q = squares + k * g.C + c;
        *q = g.init ? batch_sq : *q + batch_sq;
      }
      total[c - c0] += batch_sq;
    }
  }
}

}  // namespace

at::Tensor class_maps_fold_cpu(at::Tensor& sums, at::Tensor& squares, const at::Tensor& x_in,
                               const at::Tensor& labels_in, bool init) {
  TORCH_CHECK(x_in.dim() >= 2, "class_maps_fold: x must be [N, C, *spatial]");
  const int64_t N = x_in.size(0), C = x_in.size(1);
  int64_t L = 1;  // explicit (not -1): an empty batch reshapes too
  for (int64_t d = 2; d < x_in.dim(); ++d) L *= x_in.size(d);
  at::Tensor x = x_in.reshape({N, C, L});  // channels_last stays a view: strides (L*C, 1, C)
  TORCH_CHECK(sums.dim() == 3 && sums.size(1) == C && sums.size(2) == L,
              "class_maps_fold: sums must be [K, C, L] for x of ", C, " channels and ", L, " pixels");
  const int64_t K = sums.size(0);
  TORCH_CHECK(sums.scalar_type() == at::kDouble && squares.scalar_type() == at::kDouble,
              "class_maps_fold: the state must be float64");
  TORCH_CHECK(sums.is_contiguous() && squares.is_contiguous(), "class_maps_fold: state must be contiguous");
  TORCH_CHECK(squares.dim() == 3 && squares.size(0) == K && squares.size(1) == C &&
                  (squares.size(2) == L || squares.size(2) == 1),
              "class_maps_fold: squares must be [K, C, L] or [K, C, 1]");
  at::Tensor labels = labels_in.to(at::kLong).contiguous();
  TORCH_CHECK(labels.numel() == N, "class_maps_fold: labels must have N entries");
  std::vector<std::vector<int64_t>> by_class(K);
  const int64_t* lab = labels.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    TORCH_CHECK(lab[n] >= 0 && lab[n] < K, "class_maps_fold: label out of range [0, K)");
    by_class[lab[n]].push_back(n);
  }
  // any stride pattern but "neither space nor channels contiguous" is read in place
  if (!(x.stride(2) == 1 || L == 1) && x.stride(1) != 1) x = x.contiguous();
  const Geometry g{K, C, L, x.stride(0), x.stride(1), L == 1 ? 1 : x.stride(2),
                   squares.size(2) == L, init};
  std::vector<double> per_channel(C, 0.0);
  double* s = sums.data_ptr<double>();
  double* q = squares.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "class_maps_fold", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    // blocks of channels (16 in channels_last: one cache line of fp32 channels); grain ~64k
    // elements of x per task, so small maps run inline
    const int64_t cb = g.sl == 1 ? 1 : 16, blocks = (C + cb - 1) / cb;
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(N * L * cb, 1));
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t c0 = b * cb, c1 = std::min(C, c0 + cb);
        fold_block<scalar_t>(p, g, by_class, c0, c1, s, q, per_channel.data() + c0);
      }
    });
  });
  double total = 0.0;
  for (int64_t c = 0; c < C; ++c) total += per_channel[c];
  return at::scalar_tensor(total, x_in.options().dtype(at::kDouble));
}


// The quantities TVS's iso form reads from ClassMaps, in one read of the state: per channel c the
// Gram [K, K] of the class-mean maps centred per pixel over classes (z_kl = mu_kl - mean_k mu_kl,
// gram_ij = sum_l z_il z_jl: mean distances without the cancellation of near-equal classes), and
// msq [K, C] = sum_l mu_kl^2 (the pooled variance from per-channel squares), mu = sums / max(n, 1).
// Tiles of space keep the centred rows in L1; every dot product adds 4-lane partials in a fixed
// order (deterministic for any thread count). Reference: ops.class_maps.maps_gram.
namespace {

// sum_j x[j] * y[j] over w4 (a multiple of 4) in 4 lanes, for two rows x0, x1 against y
inline void dot2(const double* x0, const double* x1, const double* y, int64_t w4, double& r0,
                 double& r1) {
  d4 a0 = {}, a1 = {};
  for (int64_t j = 0; j < w4; j += 4) {
    const d4 v = load_d4(y + j);
    a0 += load_d4(x0 + j) * v;
    a1 += load_d4(x1 + j) * v;
  }
  r0 = hsum(a0);
  r1 = hsum(a1);
}


void gram_channel(const double* sums, const double* inv, int64_t K, int64_t C, int64_t L, int64_t c,
                  double* z, double* mean, double* gram, double* msq) {
  constexpr int64_t LT = 256;
  for (int64_t l0 = 0; l0 < L; l0 += LT) {
    const int64_t w = std::min(LT, L - l0), w4 = (w + 3) / 4 * 4;
    std::fill(mean, mean + w4, 0.0);
    for (int64_t k = 0; k < K; ++k) {
      const double* row = sums + (k * C + c) * L + l0;
      double* zk = z + k * LT;
      for (int64_t j = 0; j < w; ++j) zk[j] = row[j] * inv[k];
      for (int64_t j = w; j < w4; ++j) zk[j] = 0.0;  // padding: adds nothing
      d4 acc = {};
      for (int64_t j = 0; j < w4; j += 4) {
        const d4 v = load_d4(zk + j);
        acc += v * v;
        store_d4(mean + j, load_d4(mean + j) + v);
      }
      msq[k * C + c] += hsum(acc);
    }
    const double invk = 1.0 / static_cast<double>(K);
    for (int64_t j = 0; j < w4; ++j) mean[j] *= invk;
    for (int64_t k = 0; k < K; ++k)  // centre each pixel over the classes
      for (int64_t j = 0; j < w4; ++j) z[k * LT + j] -= mean[j];
    for (int64_t a = 0; a < K; ++a) {
      const double* za = z + a * LT;
      int64_t b = 0;
      for (; b + 1 <= a; b += 2) {  // rows b, b + 1 against a: one load of a per two products
        double r0, r1;
        dot2(z + b * LT, z + (b + 1) * LT, za, w4, r0, r1);
        gram[(c * K + a) * K + b] += r0;
        gram[(c * K + a) * K + b + 1] += r1;
      }
      if (b == a) {
        double r0, r1;
        dot2(za, za, za, w4, r0, r1);
        gram[(c * K + a) * K + a] += r0;
      }
    }
  }
  for (int64_t a = 0; a < K; ++a)
    for (int64_t b = a + 1; b < K; ++b) gram[(c * K + a) * K + b] = gram[(c * K + b) * K + a];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> class_maps_gram_cpu(const at::Tensor& sums_in, const at::Tensor& counts_in) {
  TORCH_CHECK(sums_in.dim() == 3 && sums_in.scalar_type() == at::kDouble,
              "class_maps_gram: sums must be float64 [K, C, L]");
  const at::Tensor sums = sums_in.contiguous();
  const int64_t K = sums.size(0), C = sums.size(1), L = sums.size(2);
  const at::Tensor counts = counts_in.to(at::kCPU, at::kDouble).contiguous();
  TORCH_CHECK(counts.numel() == K, "class_maps_gram: counts must have K entries");
  std::vector<double> inv(K);
  for (int64_t k = 0; k < K; ++k) inv[k] = 1.0 / std::max(counts.data_ptr<double>()[k], 1.0);
  at::Tensor gram = at::zeros({C, K, K}, sums.options()), msq = at::zeros({K, C}, sums.options());
  const double* s = sums.data_ptr<double>();
  double *g = gram.data_ptr<double>(), *m = msq.data_ptr<double>();
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(K * L, 1));
  at::parallel_for(0, C, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> z(K * 256), mean(256);
    for (int64_t c = begin; c < end; ++c) gram_channel(s, inv.data(), K, C, L, c, z.data(), mean.data(), g, m);
  });
  return {gram, msq};
}

}  // namespace pluginedit
