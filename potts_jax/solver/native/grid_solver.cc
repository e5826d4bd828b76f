// The soft pseudo-label solver's loop on the CPU, as one XLA FFI call.
//
// Computes the iterates of the XLA loops in potts_jax/solver/loop.py (equal
// up to float32 rounding: the order of sums differs) of two updates on the
// logits, both carried out on the unnormalised iterate v (y = v / sum_k v,
// and l <- l - delta is v <- r v exp(-delta) since softmax(l - delta) is
// proportional to softmax(l) exp(-delta)):
//
//   gd:    v <- r v exp(-t * free * grad),  grad = y (.) (g - y^T g),  g = dE/dy,
//   adam:  gr = free * grad,  m <- b1 m + (1 - b1) gr,  s <- b2 s + (1 - b2) gr^2,
//          v <- r v exp(-t_n (m / (1 - b1^n)) / (sqrt(s / (1 - b2^n)) + eps))
//          at step n = 1, 2, ... with t_n = t decay^((n - 1) / (N - 1))
//          (optax.adam's update; potts_jax/solver/updates.py, adam_loop),
//
// for a grid neighbourhood (nn4: offsets (0,1),(1,0); nn8: also (1,1),(1,-1))
// and any relaxation / cross-entropy of potts.py / losses.py, with the same
// guards (ln max(x, eps) and sqrt max(x, eps) with zero slope below eps).
// What it adds over XLA:CPU is locality: each step is one sweep over the rows
// of an image in which row h+1's channel sums, row h's per-pair partials and
// row h's update are computed together, so v and sigma are read from memory
// once per step and no per-pixel coefficient plane is recomputed per class.
// Images are distributed over threads; each thread runs all steps of its
// images. Keep the formulas in step with potts_jax/solver/objective.py
// (logit_step) and updates.py: tests/test_cpu_solver.py compares the two loops
// on every relaxation, cross-entropy, neighbourhood and update.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Relaxation and cross-entropy codes, in the order of RELAXATIONS and
// CROSS_ENTROPIES in native/__init__.py (tests/test_cpu_solver.py parses
// these enums and compares the orders).
enum Relaxation { kBl = 0, kQ, kNq, kCce, kCd, kLq };
enum CrossEntropy { kCe = 0, kRce, kCceH, kQH };
// Update codes, in the order of METHODS in native/__init__.py.
enum Method { kGd = 0, kAdam };

constexpr int kMaxOffsets = 4;
constexpr int kMaxVectors = 64;  // 512 classes.
constexpr int kDy[kMaxOffsets] = {0, 1, 1, 1};
constexpr int kDx[kMaxOffsets] = {1, 0, 1, -1};

// Eight float32 lanes (GCC/Clang vector extensions: AVX with -march=native
// on x86-64, split into narrower registers elsewhere).
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int kLanes = 8;

inline __attribute__((always_inline)) v8 splat(float x) {
  return v8{x, x, x, x, x, x, x, x};
}

// Lane-wise sqrt (vectorised by the compiler: -fno-math-errno).
inline __attribute__((always_inline)) v8 sqrt8(v8 x) {
  v8 out;
  for (int l = 0; l < 8; ++l) out[l] = std::sqrt(x[l]);
  return out;
}

inline __attribute__((always_inline)) float hsum(v8 x) {
  return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
}

// exp(x) in float32 (Cephes' expf: range reduction by ln 2 in two parts and a
// degree-6 polynomial, relative error ~1e-7), branch-free on eight lanes.
// Returns 0 below -87.3 (where expf underflows) and clamps at 88.4.
inline __attribute__((always_inline)) v8 exp8(v8 x) {
  const v8 hi = x < 88.37626f ? x : splat(88.37626f);
  const v8 lo = hi > -87.33654f ? hi : splat(-87.33654f);
  const v8 y = lo * 1.44269504088896341f;
  const v8i ni = __builtin_convertvector(y + (y >= 0.0f ? splat(0.5f) : splat(-0.5f)), v8i);
  const v8 n = __builtin_convertvector(ni, v8);
  v8 r = lo - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  v8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8 scale = (v8)((ni + 127) << 23);
  return x < -87.33654f ? splat(0.0f) : p * scale;
}

// w * (dP/ds, dP/da, dP/db) of relaxation R at (s, a, b), with the guards of
// potts.safe_log / potts.safe_sqrt (zero slope below eps). Branch-free, so
// that pair_row's loop over a row vectorises; 0 wherever w is 0.
template <int R>
inline __attribute__((always_inline)) void partials(
    float w, float s, float a, float b, float eps, float* fs, float* fa,
    float* fb) {
  // Guarded reciprocals: 1/x where x > eps, else 0 (and no division by 0).
  auto inv = [eps](float x) { return x > eps ? 1.0f / (x > eps ? x : 1.0f) : 0.0f; };
  if (R == kBl) {
    *fs = -w, *fa = 0.0f, *fb = 0.0f;
  } else if (R == kQ) {
    *fs = -w, *fa = 0.5f * w, *fb = 0.5f * w;
  } else if (R == kNq) {
    const float p = a * b;
    const bool ok = p > eps;
    const float sq = std::sqrt(ok ? p : eps);
    const float isq = 1.0f / sq;
    *fs = -w * isq;
    const float fp = ok ? w * 0.5f * s * isq * isq * isq : 0.0f;
    *fa = fp * b, *fb = fp * a;
  } else if (R == kCce) {
    *fs = -w * inv(s), *fa = 0.0f, *fb = 0.0f;
  } else if (R == kCd) {
    *fs = -w * inv(s), *fa = 0.5f * w * inv(a), *fb = 0.5f * w * inv(b);
  } else {  // kLq: -ln(1 - (a + b)/2 + s).
    const float fx = -w * inv(1.0f - 0.5f * (a + b) + s);
    *fs = fx, *fa = -0.5f * fx, *fb = -0.5f * fx;
  }
}

// Inside the kernel, every pixel's K classes are padded with zeros to kp =
// nv * 8 lanes: a zero class stays zero (its update multiplies 0) and adds
// nothing to any sum, so padding changes no result.
// step is the step of the current iteration (t, or t_n for adam); c1, c2
// are adam's bias corrections 1 / (1 - b1^n), 1 / (1 - b2^n) at step n.
struct Problem {
  int64_t h, w, k, d, nv;
  int relaxation, cross_entropy, method;
  float eps, step, b1, b2, adam_eps, c1, c2;
};

// Per-thread planes for one image, [H * W] each, and the exponents of one
// row's update, [W * nv].
struct Planes {
  Planes(int64_t n, int64_t d, int64_t row_vectors)
      : r(n), a(n), u1(n), u2(n), s(d * n), fs(d * n), fa(d * n), fb(d * n),
        z(row_vectors) {}
  std::vector<float> r, a, u1, u2, s, fs, fa, fb;
  std::vector<v8> z;
};

// NV > 0: the number of 8-lane vectors per pixel, known at compile time;
// NV == 0: read from pb.nv. CE: the cross-entropy.
template <int NV, int CE>
struct Rows {
  static int64_t nv(const Problem& pb) { return NV > 0 ? NV : pb.nv; }

  // Channel sums of row `row`: r = 1/sum v, a = |y|^2, the raw pair sums
  // v_i^T v_{i+o} (kept in s until pair_row scales them), the unary sums.
  __attribute__((noinline)) static void sums(const Problem& pb, const v8* v, const v8* sig,
                   const v8* logsig, int64_t row, Planes& pl) {
    const int64_t H = pb.h, W = pb.w, n = H * W, V = nv(pb);
    for (int64_t c = 0; c < W; ++c) {
      const int64_t i = row * W + c;
      const v8* vi = v + i * V;
      const v8* si = sig + i * V;
      v8 s0 = splat(0.f), s1 = s0, u1 = s0;
      for (int64_t j = 0; j < V; ++j) {
        s0 += vi[j];
        s1 += vi[j] * vi[j];
      }
      switch (CE) {
        case kCe:
          for (int64_t j = 0; j < V; ++j) u1 += vi[j] * logsig[i * V + j];
          break;
        case kRce:
          for (int64_t j = 0; j < V; ++j)
            u1 += vi[j] > pb.eps ? si[j] : splat(0.f);
          break;
        default:  // kCceH and kQH: sigma^T v.
          for (int64_t j = 0; j < V; ++j) u1 += si[j] * vi[j];
          break;
      }
      for (int64_t o = 0; o < pb.d; ++o) {
        const int64_t rr = row + kDy[o], cc = c + kDx[o];
        float so = 0.f;
        if (rr < H && cc >= 0 && cc < W) {
          const v8* vj = v + (rr * W + cc) * V;
          v8 acc = splat(0.f);
          for (int64_t j = 0; j < V; ++j) acc += vi[j] * vj[j];
          so = hsum(acc);
        }
        pl.s[o * n + i] = so;
      }
      const float r = 1.0f / hsum(s0);
      pl.r[i] = r;
      pl.a[i] = hsum(s1) * r * r;
      pl.u1[i] = hsum(u1);
    }
  }

  // The update of row `row` from v into out (and, for adam, of the moments
  // m1, m2 in place). Needs pair_row of rows row - 1 and row. The exponents
  // go to the row buffer zr first; the moments and exps then run over the
  // whole row, so that the dependency chains of neighbouring pixels overlap
  // (with one vector per pixel a pixel's own exp chain would stall).
  __attribute__((noinline)) static void update(const Problem& pb, const v8* v, const v8* sig,
                     const v8* logsig, const float* m, const float* fr,
                     int64_t row, const Planes& pl, v8* zr, v8* m1, v8* m2,
                     v8* out) {
    const int64_t H = pb.h, W = pb.w, n = H * W, V = nv(pb);
    for (int64_t c = 0; c < W; ++c) {
      const int64_t i = row * W + c;
      const float r = pl.r[i], a = pl.a[i];
      // Coefficients of the (up to 2 D) neighbours' v in r * g.
      float beta[2 * kMaxOffsets];
      const v8* vn[2 * kMaxOffsets];
      int nb = 0;
      float diag = 0.f, ydotg = 0.f;
      for (int64_t o = 0; o < pb.d; ++o) {
        const int64_t q = o * n;
        diag += pl.fa[q + i];
        ydotg += pl.fs[q + i] * pl.s[q + i];
        const int64_t rf = row + kDy[o], cf = c + kDx[o];
        if (rf < H && cf >= 0 && cf < W) {
          const int64_t j = rf * W + cf;
          beta[nb] = r * pl.fs[q + i] * pl.r[j];
          vn[nb++] = v + j * V;
        }
        const int64_t rb = row - kDy[o], cb = c - kDx[o];
        if (rb >= 0 && cb >= 0 && cb < W) {
          const int64_t j = rb * W + cb;
          diag += pl.fb[q + j];
          ydotg += pl.fs[q + j] * pl.s[q + j];
          beta[nb] = r * pl.fs[q + j] * pl.r[j];
          vn[nb++] = v + j * V;
        }
      }
      ydotg += 2.f * diag * a;
      const float mi = m[i];
      // Unary part: y (.) dH/dy = c1 * basis1 + c2 * basis2, and y^T dH/dy.
      float c1 = 0.f, c2 = 0.f;
      switch (CE) {
        case kCe:
          c1 = -mi * r, ydotg += -mi * r * pl.u1[i];
          break;
        case kRce:
          c1 = -mi, ydotg += -mi * pl.u1[i];
          break;
        case kCceH: {
          const float u = pl.u1[i] * r;
          const float cu = u > pb.eps ? -mi / u : 0.f;
          c1 = cu * r, ydotg += cu * u;
          break;
        }
        default:  // kQH: y (.) (y - sigma) = r^2 v^2 - r sigma v.
          c1 = mi * r * r, c2 = -mi * r, ydotg += mi * (a - pl.u1[i] * r);
          break;
      }
      const float alpha = 2.f * diag * r * r, delta = r * ydotg;
      // gd: the step -t free grad; adam: the gradient free grad.
      const float mt = pb.method == kAdam ? fr[i] : -pb.step * fr[i];
      const v8* vi = v + i * V;
      const v8* si = sig + i * V;
      v8* z = zr + c * V;
      for (int64_t j = 0; j < V; ++j) {
        // r g - y^T g in units of v, then y (.) that plus the unary part.
        v8 g = alpha * vi[j] - delta;
        for (int b = 0; b < nb; ++b) g += beta[b] * vn[b][j];
        v8 grad = vi[j] * g;
        switch (CE) {
          case kCe:
            grad += c1 * vi[j] * logsig[i * V + j];
            break;
          case kRce:
            grad += c1 * (vi[j] > pb.eps ? si[j] : splat(0.f));
            break;
          case kCceH:
            grad += c1 * si[j] * vi[j];
            break;
          default:
            grad += c1 * vi[j] * vi[j] + c2 * si[j] * vi[j];
            break;
        }
        z[j] = mt * grad;
      }
    }
    const int64_t i0 = row * W * V;
    if (pb.method == kAdam) {
      v8* mr = m1 + i0;
      v8* sr = m2 + i0;
      for (int64_t q = 0; q < W * V; ++q) {
        const v8 gr = zr[q];
        mr[q] = (1.f - pb.b1) * gr + pb.b1 * mr[q];
        sr[q] = (1.f - pb.b2) * (gr * gr) + pb.b2 * sr[q];
        zr[q] = -pb.step * ((mr[q] * pb.c1) / (sqrt8(sr[q] * pb.c2) + pb.adam_eps));
      }
    }
    const v8* vr = v + i0;
    v8* orow = out + i0;
    for (int64_t c = 0; c < W; ++c) {
      const float r = pl.r[row * W + c];
      for (int64_t j = 0; j < V; ++j) {
        orow[c * V + j] = r * vr[c * V + j] * exp8(zr[c * V + j]);
      }
    }
  }
};

// Scales row `row`'s pair sums to s = y_i^T y_{i+o} and stores the weighted
// partials of every pair (i, i + o) with i in the row. Needs row + 1's sums.
// Pairs whose partner lies outside the image get s = 0 and zero partials.
template <int R>
__attribute__((noinline)) void pair_row(const Problem& pb, const float* wts, int64_t row, Planes& pl) {
  const int64_t H = pb.h, W = pb.w, n = H * W, D = pb.d;
  const float eps = pb.eps;
  for (int64_t o = 0; o < D; ++o) {
    const int64_t i0 = row * W, j0 = (row + kDy[o]) * W + kDx[o];
    // Columns whose partner is inside the image.
    const int64_t c0 = std::max<int64_t>(0, -kDx[o]);
    const int64_t c1 = row + kDy[o] < H ? W - std::max<int64_t>(0, kDx[o]) : 0;
    float* s = pl.s.data() + o * n + i0;
    float* fs = pl.fs.data() + o * n + i0;
    float* fa = pl.fa.data() + o * n + i0;
    float* fb = pl.fb.data() + o * n + i0;
    const float* r = pl.r.data() + i0;
    const float* a = pl.a.data() + i0;
    const float* rj = pl.r.data() + j0;
    const float* aj = pl.a.data() + j0;
    for (int64_t c = 0; c < W; ++c) {
      if (c >= c0 && c < c1) continue;
      s[c] = fs[c] = fa[c] = fb[c] = 0.0f;
    }
    for (int64_t c = c0; c < c1; ++c) {
      const float sc = s[c] * r[c] * rj[c];
      s[c] = sc;
      partials<R>(wts[(i0 + c) * D + o], sc, a[c], aj[c], eps, &fs[c], &fa[c],
                  &fb[c]);
    }
  }
}

using SumsFn = void (*)(const Problem&, const v8*, const v8*, const v8*,
                       int64_t, Planes&);
using PairFn = void (*)(const Problem&, const float*, int64_t, Planes&);
using UpdateFn = void (*)(const Problem&, const v8*, const v8*, const v8*,
                          const float*, const float*, int64_t, const Planes&,
                          v8*, v8*, v8*, v8*);

// The row functions for one problem, picked once per call.
struct RowFns {
  SumsFn sums;
  PairFn pairs;
  UpdateFn update;
};

// One step for one image: sums of row h + 1, pairs of row h, update of row h,
// in one sweep, so that the rows a step reads are in cache when it needs them.
void step_image(const Problem& pb, const RowFns& fn, const v8* v,
                const v8* sig, const v8* logsig, const float* wts,
                const float* m, const float* fr, Planes& pl, v8* m1, v8* m2,
                v8* out) {
  fn.sums(pb, v, sig, logsig, 0, pl);
  for (int64_t row = 0; row < pb.h; ++row) {
    if (row + 1 < pb.h) fn.sums(pb, v, sig, logsig, row + 1, pl);
    fn.pairs(pb, wts, row, pl);
    fn.update(pb, v, sig, logsig, m, fr, row, pl, pl.z.data(), m1, m2, out);
  }
}

// The Problem of step t (0-based) of num_steps: adam's step size and bias
// corrections (in double, then rounded, as optax rounds 1 - b^n).
Problem at_step(const Problem& pb, float decay, int64_t t, int64_t num_steps) {
  Problem ps = pb;
  if (pb.method == kAdam) {
    const double frac =
        num_steps > 1 ? static_cast<double>(t) / (num_steps - 1) : 0.0;
    ps.step = static_cast<float>(pb.step * std::pow(static_cast<double>(decay), frac));
    ps.c1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(pb.b1), t + 1)));
    ps.c2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(pb.b2), t + 1)));
  }
  return ps;
}

// [n, K] floats -> [n, nv] zero-padded vectors, and back.
void pad_classes(const float* x, int64_t n, int64_t k, int64_t nv, v8* out) {
  for (int64_t i = 0; i < n; ++i) {
    float* o = reinterpret_cast<float*>(out + i * nv);
    std::copy(x + i * k, x + (i + 1) * k, o);
    std::fill(o + k, o + nv * kLanes, 0.f);
  }
}

void unpad_classes(const v8* x, int64_t n, int64_t k, int64_t nv, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* p = reinterpret_cast<const float*>(x + i * nv);
    std::copy(p, p + k, out + i * k);
  }
}

// All steps for images b0..b1-1 (one thread's share), from v0 into out.
void solve_images(const Problem& pb, const RowFns& fn, int64_t num_steps,
                  float decay, int64_t b0, int64_t b1, const float* v0,
                  const float* sig, const float* logsig, const float* wts,
                  const float* m, const float* fr, float* out) {
  const int64_t n = pb.h * pb.w, K = pb.k, V = pb.nv;
  Planes pl(n, pb.d, pb.w * V);
  std::vector<v8> va(n * V), vb(n * V), sp(n * V);
  std::vector<v8> lp(pb.cross_entropy == kCe ? n * V : 0);
  const int64_t nm = pb.method == kAdam ? n * V : 0;
  std::vector<v8> m1(nm), m2(nm);  // adam's moments
  for (int64_t b = b0; b < b1; ++b) {
    pad_classes(v0 + b * n * K, n, K, V, va.data());
    pad_classes(sig + b * n * K, n, K, V, sp.data());
    if (!lp.empty()) pad_classes(logsig + b * n * K, n, K, V, lp.data());
    std::fill(m1.begin(), m1.end(), splat(0.f));
    std::fill(m2.begin(), m2.end(), splat(0.f));
    v8* src = va.data();
    v8* dst = vb.data();
    for (int64_t t = 0; t < num_steps; ++t) {
      step_image(at_step(pb, decay, t, num_steps), fn, src, sp.data(),
                 lp.data(), wts + b * n * pb.d, m + b * n, fr + b * n, pl,
                 m1.data(), m2.data(), dst);
      std::swap(src, dst);
    }
    unpad_classes(src, n, K, V, out + b * n * K);
  }
}

template <int NV>
RowFns pick_cross_entropy(int cross_entropy) {
  switch (cross_entropy) {
    case kCe: return {Rows<NV, kCe>::sums, nullptr, Rows<NV, kCe>::update};
    case kRce: return {Rows<NV, kRce>::sums, nullptr, Rows<NV, kRce>::update};
    case kCceH:
      return {Rows<NV, kCceH>::sums, nullptr, Rows<NV, kCceH>::update};
    default: return {Rows<NV, kQH>::sums, nullptr, Rows<NV, kQH>::update};
  }
}

// Up to 32 classes (nv <= 4) the class loops are unrolled at compile time.
RowFns pick_row_fns(int64_t nv, int relaxation, int cross_entropy) {
  RowFns fn;
  switch (nv) {
    case 1: fn = pick_cross_entropy<1>(cross_entropy); break;
    case 2: fn = pick_cross_entropy<2>(cross_entropy); break;
    case 3: fn = pick_cross_entropy<3>(cross_entropy); break;
    case 4: fn = pick_cross_entropy<4>(cross_entropy); break;
    default: fn = pick_cross_entropy<0>(cross_entropy); break;
  }
  switch (relaxation) {
    case kBl: fn.pairs = pair_row<kBl>; break;
    case kQ: fn.pairs = pair_row<kQ>; break;
    case kNq: fn.pairs = pair_row<kNq>; break;
    case kCce: fn.pairs = pair_row<kCce>; break;
    case kCd: fn.pairs = pair_row<kCd>; break;
    default: fn.pairs = pair_row<kLq>; break;
  }
  return fn;
}

ffi::Error GridSolveImpl(ffi::Buffer<ffi::F32> v0, ffi::Buffer<ffi::F32> sigma,
                         ffi::Buffer<ffi::F32> log_sigma,
                         ffi::Buffer<ffi::F32> weights,
                         ffi::Buffer<ffi::F32> unary_weight,
                         ffi::Buffer<ffi::F32> free,
                         ffi::Buffer<ffi::F32> params,
                         ffi::ResultBuffer<ffi::F32> out, int64_t num_steps,
                         int64_t relaxation, int64_t cross_entropy,
                         int64_t method, float eps, int64_t num_threads) {
  const auto dims = v0.dimensions();
  if (dims.size() != 4) {
    return ffi::Error::InvalidArgument("v0 must be [B, H, W, K]");
  }
  const int64_t B = dims[0], H = dims[1], W = dims[2], K = dims[3];
  const auto wd = weights.dimensions();
  if (wd.size() != 4 || wd[0] != B || wd[1] != H || wd[2] != W ||
      (wd[3] != 2 && wd[3] != 4)) {
    return ffi::Error::InvalidArgument(
        "weights must be [B, H, W, 2] (nn4) or [B, H, W, 4] (nn8)");
  }
  if (relaxation < 0 || relaxation > kLq || cross_entropy < 0 ||
      cross_entropy > kQH || num_steps < 0 || method < 0 || method > kAdam) {
    return ffi::Error::InvalidArgument(
        "bad relaxation, cross_entropy, method or num_steps code: " +
        std::to_string(relaxation) + ", " + std::to_string(cross_entropy) +
        ", " + std::to_string(method) + ", " + std::to_string(num_steps));
  }
  if (params.element_count() != 5) {
    return ffi::Error::InvalidArgument(
        "params must be [step, decay, b1, b2, eps]; got " +
        std::to_string(params.element_count()) + " values");
  }
  const float* pv = params.typed_data();
  const int64_t nv = (K + kLanes - 1) / kLanes;
  Problem pb{H, W, K, wd[3], nv, static_cast<int>(relaxation),
             static_cast<int>(cross_entropy), static_cast<int>(method), eps,
             pv[0], pv[2], pv[3], pv[4], 1.f, 1.f};
  const float decay = pv[1];
  if (nv > kMaxVectors) {
    return ffi::Error::InvalidArgument(
        "at most " + std::to_string(kMaxVectors * kLanes) +
        " classes; got K = " + std::to_string(K));
  }
  const RowFns fn = pick_row_fns(nv, pb.relaxation, pb.cross_entropy);
  int64_t threads = num_threads > 0
                        ? num_threads
                        : std::max<int64_t>(1, std::thread::hardware_concurrency());
  threads = std::max<int64_t>(1, std::min(threads, B));
  auto run = [&](int64_t t) {
    const int64_t b0 = B * t / threads, b1 = B * (t + 1) / threads;
    solve_images(pb, fn, num_steps, decay, b0, b1, v0.typed_data(),
                 sigma.typed_data(), log_sigma.typed_data(),
                 weights.typed_data(), unary_weight.typed_data(),
                 free.typed_data(), out->typed_data());
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(run, t);
  if (B > 0) run(0);
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PottsGridSolve, GridSolveImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // sigma
                                  .Arg<ffi::Buffer<ffi::F32>>()  // log_sigma
                                  .Arg<ffi::Buffer<ffi::F32>>()  // weights
                                  .Arg<ffi::Buffer<ffi::F32>>()  // unary_weight
                                  .Arg<ffi::Buffer<ffi::F32>>()  // free
                                  .Arg<ffi::Buffer<ffi::F32>>()  // params
                                  .Ret<ffi::Buffer<ffi::F32>>()  // v
                                  .Attr<int64_t>("num_steps")
                                  .Attr<int64_t>("relaxation")
                                  .Attr<int64_t>("cross_entropy")
                                  .Attr<int64_t>("method")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("num_threads"));
