// Plane-at-a-time forms of the mixed depthwise math: the CPU twin's fast path (CPU only; the
// CUDA kernels use the per-element forms of mixed_dw.h, which the CPU library also exports).
//
// Each (n, c) plane is copied, with the BN1+ReLU prologue applied, into per-thread scratch,
// zero-padded and split into stride^2 phases (the polyphase "wide" layout below). Every form
// then reduces to one loop, `correlate`: output values as sums over the taps of a weight times
// the scratch at a constant offset. It keeps a block of rows x vectors of outputs in registers
// while it runs over the taps (independent FMA chains, one unaligned load per FMA), instead of
// loading and storing the whole output plane once per tap (docs/kernel.md).
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "mixed_dw.h"

// Explicit SIMD vectors (GCC/Clang vector extensions): 32 bytes, 8 floats or 4 doubles.
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Simd<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
constexpr int simd_lanes = 32 / sizeof(T);

template <typename T>
inline typename Simd<T>::type vload(const T* p) {
  typename Simd<T>::type v;
  std::memcpy(&v, p, sizeof v);  // unaligned
  return v;
}

// Values past the end of every scratch region that a block's last vectors may read. They only
// reach discarded lanes or products with zero gradients, and are kept zero (finite, and not
// denormal: no slow microcode assists).
template <typename T>
constexpr int plane_slack = 8 * simd_lanes<T>;

// dst[r * dst_pitch + c * dst_step] = sum_t w[t] * src[r * src_pitch + off[t] + c] for r < ROWS,
// c < cols, with ROWS x VECS accumulators; reads up to VECS vectors from each row's start.
template <typename T, int ROWS, int VECS>
inline void correlate_block(const T* src, int src_pitch, const int* off, const T* w, int taps, T* dst, int dst_pitch,
                            int dst_step, int cols) {
  typedef typename Simd<T>::type V;
  constexpr int L = simd_lanes<T>;
  V acc[ROWS][VECS] = {};
  for (int t = 0; t < taps; ++t) {
    const T wv = w[t];
    const T* p = src + off[t];
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < VECS; ++v) acc[r][v] += wv * vload(p + r * src_pitch + v * L);
  }
  for (int r = 0; r < ROWS; ++r) {
    T out[VECS * L];
    std::memcpy(out, acc[r], sizeof out);
    T* d = dst + (hwnas_index)r * dst_pitch;
    if (dst_step == 1)
      std::memcpy(d, out, cols * sizeof(T));
    else
      for (int c = 0; c < cols; ++c) d[c * dst_step] = out[c];
  }
}

template <typename T, int ROWS, int VECS>
inline void correlate_rows(const T* src, int src_pitch, const int* off, const T* w, int taps, T* dst, int dst_pitch,
                           int dst_step, int rows, int cols) {
  int r = 0;
  for (; r + ROWS <= rows; r += ROWS)
    correlate_block<T, ROWS, VECS>(src + (hwnas_index)r * src_pitch, src_pitch, off, w, taps,
                                   dst + (hwnas_index)r * dst_pitch, dst_pitch, dst_step, cols);
  for (; r < rows; ++r)
    correlate_block<T, 1, VECS>(src + (hwnas_index)r * src_pitch, src_pitch, off, w, taps,
                                dst + (hwnas_index)r * dst_pitch, dst_pitch, dst_step, cols);
}

// The loop every plane form reduces to (see correlate_block), over rows x cols outputs: column
// chunks of up to 4 vectors, rows blocked so that a block has 4 to 6 independent FMA chains.
template <typename T>
inline void correlate(const T* src, int src_pitch, const int* off, const T* w, int taps, T* dst, int dst_pitch,
                      int dst_step, int rows, int cols) {
  constexpr int L = simd_lanes<T>;
  for (int c0 = 0; c0 < cols; c0 += 4 * L) {
    const int n = std::min(4 * L, cols - c0);
    const T* s = src + c0;
    T* d = dst + (hwnas_index)c0 * dst_step;
    switch ((n + L - 1) / L) {
      case 1: correlate_rows<T, 4, 1>(s, src_pitch, off, w, taps, d, dst_pitch, dst_step, rows, n); break;
      case 2: correlate_rows<T, 2, 2>(s, src_pitch, off, w, taps, d, dst_pitch, dst_step, rows, n); break;
      case 3: correlate_rows<T, 2, 3>(s, src_pitch, off, w, taps, d, dst_pitch, dst_step, rows, n); break;
      default: correlate_rows<T, 1, 4>(s, src_pitch, off, w, taps, d, dst_pitch, dst_step, rows, n); break;
    }
  }
}

// ---- the polyphase "wide" layout -------------------------------------------------------------
// The input plane, zero-padded by p on every side, is split into stride^2 phases by (row % stride,
// column % stride); each phase is an Hq x Wq plane. Tap (ky, kx) of output (oy, ox) then reads
// one phase at index oy * Wq + ox + tap_offset: a constant offset per tap, no bounds checks.
// (Stride 1 has one phase: the padded plane itself.) The output gradient, widened to pitch Wq
// with zeros in columns w_out..Wq-1, is the "wide" plane of the backward forms.
struct Wide {
  int p, stride, Hq, Wq;
};

inline Wide wide_of(const Segment& s, int H, int W) {
  return Wide{s.padding, s.stride, (H + 2 * s.padding + s.stride - 1) / s.stride,
              (W + 2 * s.padding + s.stride - 1) / s.stride};
}

inline int phase_values(const Wide& g) { return g.stride * g.stride * g.Hq * g.Wq; }

// Where padded input position (Y, X) lives in the phases.
inline int phase_index(const Wide& g, int Y, int X) {
  return ((Y % g.stride) * g.stride + X % g.stride) * g.Hq * g.Wq + (Y / g.stride) * g.Wq + X / g.stride;
}

// The first input row (or column) i >= 0 of phase row (column) `phase`: (i + p) % stride == phase.
inline int first_in_phase(const Wide& g, int phase) { return ((phase - g.p) % g.stride + g.stride) % g.stride; }

// A segment's plane geometry, computed once per segment: the layout and each tap's offset.
// A tap reads one phase: the backward's gathers into phase P take only the taps of phase P
// (at stride 2 a quarter of them; the others would add zeros), as tap indices and negated offsets.
struct PlaneGeometry {
  Wide g;
  int taps, max_offset;
  bool pointwise;                               // 1x1, stride 1: an elementwise op, no scratch needed
  std::vector<int> offset;                      // offset[ky * k + kx]
  std::vector<std::vector<int>> phase_taps;     // [phase] tap indices
  std::vector<std::vector<int>> phase_negated;  // [phase] -offset of those taps
};

inline PlaneGeometry plane_geometry(const Segment& s, int H, int W) {
  const Wide g = wide_of(s, H, W);
  const int phases = g.stride * g.stride;
  PlaneGeometry pg{g, s.kernel * s.kernel, 0, s.kernel == 1 && s.stride == 1, {}, std::vector<std::vector<int>>(phases),
                   std::vector<std::vector<int>>(phases)};
  for (int ky = 0; ky < s.kernel; ++ky)
    for (int kx = 0; kx < s.kernel; ++kx) {
      const int Y = ky * s.dilation, X = kx * s.dilation, o = phase_index(g, Y, X);
      const int phase = (Y % g.stride) * g.stride + X % g.stride;
      pg.offset.push_back(o);
      pg.phase_taps[phase].push_back(ky * s.kernel + kx);
      pg.phase_negated[phase].push_back(-o);
      pg.max_offset = std::max(pg.max_offset, o);
    }
  return pg;
}

// Scratch values one thread needs for any segment of the table: phases, then the widened
// gradient with max_offset (< phase_values) zeros in front, each followed by its slack.
template <typename T>
inline hwnas_index plane_scratch_size(const SegmentTable& t) {
  hwnas_index most = 0;
  for (int i = 0; i < t.count; ++i) {
    const Wide g = wide_of(t.seg[i], t.H, t.W);
    const hwnas_index need = 2 * (hwnas_index)phase_values(g) + (hwnas_index)t.seg[i].h_out * g.Wq +
                             (hwnas_index)t.seg[i].kernel * t.seg[i].kernel + 4 * plane_slack<T>;
    most = std::max(most, need);
  }
  return most;
}

// The prologue on load: a = relu(h * scale + shift) of one channel, or the identity.
template <typename T>
struct PlaneLoad {
  bool on;
  T scale, shift;
};

template <typename T>
inline PlaneLoad<T> plane_load(BnRelu<T> bn, int c) {
  return bn.scale ? PlaneLoad<T>{true, bn.scale[c], bn.shift[c]} : PlaneLoad<T>{false, T(1), T(0)};
}

// Calls body(f) with f the prologue as a function of one value: the branch on load.on is taken
// once, outside the loops body runs.
template <typename T, typename Body>
inline void with_prologue(PlaneLoad<T> load, Body body) {
  const T scale = load.scale, shift = load.shift;
  if (load.on)
    body([=](T v) { return bn_relu_at(v, scale, shift); });
  else
    body([](T v) { return v; });
}

// Input row iy of the plane into its phase rows (all columns, through f): stride 1 a copy,
// stride 2 a deinterleave of even and odd columns in one loop (both vectorise), any other
// stride column by column.
template <int S, typename T, typename F>
inline void row_to_phases(const T* __restrict in, T* __restrict phases, const Wide& g, int iy, int W, F f) {
  const int Y = iy + g.p;
  if (S == 1) {
    T* __restrict out = phases + phase_index(g, Y, g.p);
    for (int ix = 0; ix < W; ++ix) out[ix] = f(in[ix]);
  } else if (S == 2) {  // column ix goes to phase (ix + p) % 2, at column (ix + p) / 2
    T* __restrict even = phases + phase_index(g, Y, g.p);
    T* __restrict odd = phases + phase_index(g, Y, g.p + 1);
    const int pairs = W / 2;
    for (int j = 0; j < pairs; ++j) {
      even[j] = f(in[2 * j]);
      odd[j] = f(in[2 * j + 1]);
    }
    if (W & 1) even[pairs] = f(in[W - 1]);
  } else {
    for (int ix = 0; ix < W; ++ix) phases[phase_index(g, Y, ix + g.p)] = f(in[ix]);
  }
}

template <int S, typename T, typename F>
inline void to_phases_with(const T* xp, T* phases, const Wide& g, int H, int W, F f) {
  std::memset(phases, 0, sizeof(T) * phase_values(g));
  for (int iy = 0; iy < H; ++iy) row_to_phases<S>(xp + iy * W, phases, g, iy, W, f);
}

// The (activated) input plane into the phases, zero padding included.
template <typename T>
inline void to_phases(const T* xp, T* phases, const Wide& g, int H, int W, PlaneLoad<T> load) {
  with_prologue(load, [&](auto f) {
    if (g.stride == 1)
      to_phases_with<1>(xp, phases, g, H, W, f);
    else if (g.stride == 2)
      to_phases_with<2>(xp, phases, g, H, W, f);
    else
      to_phases_with<0>(xp, phases, g, H, W, f);
  });
}

// An (h_out x w_out) plane into the wide layout (pitch Wq, zeros in columns w_out..Wq-1).
template <typename T>
inline void widen_plane(const T* yp, T* wide, const Segment& s, const Wide& g) {
  for (int oy = 0; oy < s.h_out; ++oy) {
    std::memcpy(wide + oy * g.Wq, yp + oy * s.w_out, sizeof(T) * s.w_out);
    std::memset(wide + oy * g.Wq + s.w_out, 0, sizeof(T) * (g.Wq - s.w_out));
  }
}

// ---- the plane forms ----------------------------------------------------------------------

// y plane (h_out x w_out) of one (n, c): each output the sum over taps of w[tap] * the phases.
template <typename T>
inline void dw_forward_plane(const T* xp, const T* wp, T* yp, const Segment& s, const PlaneGeometry& pg, int H, int W,
                             T* scratch, PlaneLoad<T> load) {
  if (pg.pointwise) {  // (the fused layer's BN2 + ReLU: unit weights)
    const T w0 = wp[0];
    with_prologue(load, [&](auto f) {
      for (int i = 0; i < H * W; ++i) yp[i] = w0 * f(xp[i]);
    });
    return;
  }
  to_phases(xp, scratch, pg.g, H, W, load);
  correlate(scratch, pg.g.Wq, pg.offset.data(), wp, pg.taps, yp, s.w_out, 1, s.h_out, s.w_out);
}

// dL/dx plane (H x W) of one (n, c): the forward's scatter of w[tap] * gy, written as a gather.
// The padded input position j (in the phases) received sum_t w[t] * wide[j - offset[t]], wide
// being zero outside its h_out rows; each phase's rows and columns that are inside the plane are
// gathered straight into gxp (every stride-th row and column of it), over that phase's taps.
template <typename T>
inline void dw_grad_input_plane(const T* gp, const T* wp, T* gxp, const Segment& s, const PlaneGeometry& pg, int H,
                                int W, T* scratch) {
  if (pg.pointwise) {
    const T w0 = wp[0];
    for (int i = 0; i < H * W; ++i) gxp[i] = w0 * gp[i];
    return;
  }
  const Wide& g = pg.g;
  const int front = pg.max_offset, rows_wide = s.h_out * g.Wq;
  T* wide = scratch;
  T* weights = scratch + front + phase_values(g) + plane_slack<T>;  // the phase's taps' weights
  std::memset(wide, 0, sizeof(T) * front);
  widen_plane(gp, wide + front, s, g);
  std::memset(wide + front + rows_wide, 0, sizeof(T) * (phase_values(g) - rows_wide + plane_slack<T>));
  for (int py = 0; py < g.stride; ++py)
    for (int px = 0; px < g.stride; ++px) {
      const int iy0 = first_in_phase(g, py), ix0 = first_in_phase(g, px);
      if (iy0 >= H || ix0 >= W) continue;
      const int rows = (H - iy0 + g.stride - 1) / g.stride, cols = (W - ix0 + g.stride - 1) / g.stride;
      const std::vector<int>& taps = pg.phase_taps[py * g.stride + px];
      for (size_t i = 0; i < taps.size(); ++i) weights[i] = wp[taps[i]];
      T* dst = gxp + iy0 * W + ix0;
      if (taps.empty()) {  // no tap reads this phase (dilation a multiple of the stride): no gradient
        for (int r = 0; r < rows; ++r)
          for (int c = 0; c < cols; ++c) dst[r * g.stride * W + c * g.stride] = T(0);
        continue;
      }
      correlate(wide + front + phase_index(g, iy0 + g.p, ix0 + g.p), g.Wq, pg.phase_negated[py * g.stride + px].data(),
                weights, (int)taps.size(), dst, g.stride * W, g.stride, rows, cols);
    }
}

// dL/dw[tap] += sum_i phases[offset[tap] + i] * wide[i] for one (n, c) plane pair: a dot product
// per tap, two taps at a time with two vectors each (four FMA chains, the gradient loads shared).
template <typename T>
inline void dw_grad_weight_plane(const T* xp, const T* gp, T* gwp, const Segment& s, const PlaneGeometry& pg, int H,
                                 int W, T* scratch, PlaneLoad<T> load) {
  if (pg.pointwise) {
    with_prologue(load, [&](auto f) {
      T acc = T(0);
      HWNAS_SIMD_SUM(acc)
      for (int i = 0; i < H * W; ++i) acc += f(xp[i]) * gp[i];
      gwp[0] += acc;
    });
    return;
  }
  typedef typename Simd<T>::type V;
  constexpr int L = simd_lanes<T>;
  const Wide& g = pg.g;
  T* phases = scratch;
  T* wide = scratch + phase_values(g) + plane_slack<T>;
  to_phases(xp, phases, g, H, W, load);
  widen_plane(gp, wide, s, g);
  const int n = (s.h_out * g.Wq + 2 * L - 1) / (2 * L) * (2 * L);  // whole vector pairs
  std::memset(wide + s.h_out * g.Wq, 0, sizeof(T) * (n - s.h_out * g.Wq));
  auto sum = [](V v) {
    T lanes[L], total = T(0);
    std::memcpy(lanes, &v, sizeof v);
    for (int j = 0; j < L; ++j) total += lanes[j];
    return total;
  };
  int t = 0;
  for (; t + 2 <= pg.taps; t += 2) {
    const T* a = phases + pg.offset[t];
    const T* b = phases + pg.offset[t + 1];
    V a0 = {}, a1 = {}, b0 = {}, b1 = {};
    for (int i = 0; i < n; i += 2 * L) {
      const V g0 = vload(wide + i), g1 = vload(wide + i + L);
      a0 += vload(a + i) * g0;
      a1 += vload(a + i + L) * g1;
      b0 += vload(b + i) * g0;
      b1 += vload(b + i + L) * g1;
    }
    gwp[t] += sum(a0 + a1);
    gwp[t + 1] += sum(b0 + b1);
  }
  for (; t < pg.taps; ++t) {
    const T* a = phases + pg.offset[t];
    V a0 = {}, a1 = {};
    for (int i = 0; i < n; i += 2 * L) {
      a0 += vload(a + i) * vload(wide + i);
      a1 += vload(a + i + L) * vload(wide + i + L);
    }
    gwp[t] += sum(a0 + a1);
  }
}
