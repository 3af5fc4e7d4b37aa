// Mixed depthwise convolution: the math, written once for the CUDA kernels (mixed_dw.cu) and
// their CPU twin (mixed_dw_cpu.cpp).
//
// The input x is (N, C, H, W): the concatenated hidden channels of all active branches of one
// multi-branch layer. Segment s owns channels [c_begin, c_begin + channels) and has its own
// kernel size, dilation, stride and padding. Its output is a contiguous (N, channels, h_out,
// w_out) block at out_offset of one flat output buffer, so each branch's projection reads it
// as an ordinary tensor. Weights: segment s's (channels, k, k) block at weight_offset.
// Accumulation is in Acc (float for fp32/fp16/bf16 storage, double for double).
#pragma once

#ifdef __CUDACC__
#define HWNAS_HD __host__ __device__ __forceinline__
#else
#define HWNAS_HD inline
#endif

#define HWNAS_MAX_SEGMENTS 32

// Lets the compiler vectorise a sum by reassociating it (CPU only; CUDA ignores it).
#if defined(_OPENMP) && !defined(__CUDACC__)
#define HWNAS_SIMD_SUM(acc) _Pragma("omp simd reduction(+ : acc)")
#else
#define HWNAS_SIMD_SUM(acc)
#endif

typedef long long hwnas_index;

struct Segment {
  int c_begin;
  int channels;
  int kernel;
  int dilation;
  int stride;
  int padding;
  int h_out;
  int w_out;
  hwnas_index out_offset;
  hwnas_index weight_offset;
};

struct SegmentTable {
  int count;
  int N, C, H, W;  // the concatenated input
  Segment seg[HWNAS_MAX_SEGMENTS];
};

// Index of the segment whose output block holds flat output index i.
HWNAS_HD int segment_of_output(const SegmentTable& t, hwnas_index i) {
  int s = 0;
  while (s + 1 < t.count && i >= t.seg[s + 1].out_offset) ++s;
  return s;
}

// Index of the segment owning input channel c.
HWNAS_HD int segment_of_channel(const SegmentTable& t, int c) {
  int s = 0;
  while (s + 1 < t.count && c >= t.seg[s + 1].c_begin) ++s;
  return s;
}

// y[n, c, oy, ox] of segment s (c local to the segment).
template <typename T, typename Acc, typename Load>
HWNAS_HD Acc dw_forward_at(const T* x, const T* w, const SegmentTable& t, const Segment& s, int n, int c, int oy,
                           int ox, Load load) {
  const T* xp = x + ((hwnas_index)n * t.C + s.c_begin + c) * t.H * t.W;
  const T* wp = w + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel;
  const int iy0 = oy * s.stride - s.padding, ix0 = ox * s.stride - s.padding;
  Acc acc = Acc(0);
  for (int ky = 0; ky < s.kernel; ++ky) {
    const int iy = iy0 + ky * s.dilation;
    if (iy < 0 || iy >= t.H) continue;
    for (int kx = 0; kx < s.kernel; ++kx) {
      const int ix = ix0 + kx * s.dilation;
      if (ix < 0 || ix >= t.W) continue;
      acc += load(xp[iy * t.W + ix]) * load(wp[ky * s.kernel + kx]);
    }
  }
  return acc;
}

// dL/dx[n, c, iy, ix] (c local to segment s), gathered from the outputs it fed: no atomics.
template <typename T, typename Acc, typename Load>
HWNAS_HD Acc dw_grad_input_at(const T* gy, const T* w, const Segment& s, int n, int c, int iy, int ix, Load load) {
  const T* gp = gy + s.out_offset + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out;
  const T* wp = w + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel;
  Acc acc = Acc(0);
  for (int ky = 0; ky < s.kernel; ++ky) {
    const int ty = iy + s.padding - ky * s.dilation;  // = oy * stride
    if (ty < 0 || ty % s.stride) continue;
    const int oy = ty / s.stride;
    if (oy >= s.h_out) continue;
    for (int kx = 0; kx < s.kernel; ++kx) {
      const int tx = ix + s.padding - kx * s.dilation;
      if (tx < 0 || tx % s.stride) continue;
      const int ox = tx / s.stride;
      if (ox >= s.w_out) continue;
      acc += load(gp[oy * s.w_out + ox]) * load(wp[ky * s.kernel + kx]);
    }
  }
  return acc;
}

// One term-row of dL/dw[c, ky, kx]: the sum over ox of x * gy for a fixed (n, oy).
template <typename T, typename Acc, typename Load>
HWNAS_HD Acc dw_grad_weight_row(const T* x, const T* gy, const SegmentTable& t, const Segment& s, int n, int c,
                                int ky, int kx, int oy, Load load) {
  const int iy = oy * s.stride - s.padding + ky * s.dilation;
  if (iy < 0 || iy >= t.H) return Acc(0);
  const T* xr = x + (((hwnas_index)n * t.C + s.c_begin + c) * t.H + iy) * t.W;
  const T* gr = gy + s.out_offset + (((hwnas_index)n * s.channels + c) * s.h_out + oy) * s.w_out;
  Acc acc = Acc(0);
  for (int ox = 0; ox < s.w_out; ++ox) {
    const int ix = ox * s.stride - s.padding + kx * s.dilation;
    if (ix >= 0 && ix < t.W) acc += load(xr[ix]) * load(gr[ox]);
  }
  return acc;
}

// ---- Plane-at-a-time forms (the CPU twin's fast path) -------------------------------------
// The same sums as above, reordered tap by tap so the innermost loop runs over contiguous
// output columns without bounds checks (vectorisable). The CUDA kernels use the per-element
// forms; the CPU library exports both, and the tests check both against PyTorch.

// Output columns [lo, hi) whose input column ox*stride - pad + kx*dil lies in [0, W).
HWNAS_HD void valid_columns(const Segment& s, int W, int kx, int* lo, int* hi) {
  const int shift = kx * s.dilation - s.padding;  // ix = ox * stride + shift
  int a = shift < 0 ? (-shift + s.stride - 1) / s.stride : 0;
  int b = (W - 1 - shift) >= 0 ? (W - 1 - shift) / s.stride + 1 : 0;
  if (b > s.w_out) b = s.w_out;
  *lo = a;
  *hi = b > a ? b : a;
}

// Stride 2 reads input columns 2*ox + shift: with the plane split into its even and odd
// columns (`phases`: even | odd, each H rows of `half` = ceil(W/2) columns), every inner
// loop becomes contiguous again. Column 2*ox + shift of phase p = shift & 1 is
// phases[p][ox + floor(shift / 2)].
HWNAS_HD int floor_half(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

template <typename T>
HWNAS_HD void split_phases(const T* xp, T* phases, int H, int W) {
  const int half = (W + 1) / 2;
  for (int iy = 0; iy < H; ++iy)
    for (int ix = 0; ix < W; ++ix) phases[(ix & 1) * H * half + iy * half + (ix >> 1)] = xp[iy * W + ix];
}

template <typename T>
HWNAS_HD void merge_phases(const T* phases, T* xp, int H, int W) {
  const int half = (W + 1) / 2;
  for (int iy = 0; iy < H; ++iy)
    for (int ix = 0; ix < W; ++ix) xp[iy * W + ix] = phases[(ix & 1) * H * half + iy * half + (ix >> 1)];
}

// The row of input iy that tap column shift reads, as a pointer r with r[ox] = x[iy][ox*stride + shift].
template <typename T>
HWNAS_HD T* tap_row(T* plane, T* phases, const Segment& s, int H, int W, int iy, int shift) {
  if (s.stride == 1) return plane + (hwnas_index)iy * W + shift;
  const int half = (W + 1) / 2;
  return phases + (hwnas_index)(shift & 1) * H * half + (hwnas_index)iy * half + floor_half(shift);
}

// Calls f(tap, in_row, oy, lo, hi) for every (tap, output row oy) whose input row lies inside
// the plane: in_row[ox] is the input value that tap reads for output column ox (through the
// even/odd phases when the stride is 2), for ox in [lo, hi).
template <typename T, typename F>
HWNAS_HD void for_each_tap_row(const Segment& s, int H, int W, T* plane, T* phases, F f) {
  for (int ky = 0; ky < s.kernel; ++ky)
    for (int kx = 0; kx < s.kernel; ++kx) {
      int lo, hi;
      valid_columns(s, W, kx, &lo, &hi);
      const int shift = kx * s.dilation - s.padding;
      for (int oy = 0; oy < s.h_out; ++oy) {
        const int iy = oy * s.stride - s.padding + ky * s.dilation;
        if (iy >= 0 && iy < H) f(ky * s.kernel + kx, tap_row(plane, phases, s, H, W, iy, shift), oy, lo, hi);
      }
    }
}

// y plane (h_out x w_out) of one (n, c) = sum over taps of w[tap] * shifted x plane.
// `phases` is scratch of 2 * H * ceil(W/2) values, used when the stride is 2.
template <typename T>
HWNAS_HD void dw_forward_plane(const T* xp, const T* wp, T* yp, const Segment& s, int H, int W, T* phases) {
  if (s.stride == 2) split_phases(xp, phases, H, W);
  for (int i = 0; i < s.h_out * s.w_out; ++i) yp[i] = T(0);
  for_each_tap_row(s, H, W, const_cast<T*>(xp), phases, [&](int tap, const T* xr, int oy, int lo, int hi) {
    const T wv = wp[tap];
    T* yr = yp + (hwnas_index)oy * s.w_out;
    for (int ox = lo; ox < hi; ++ox) yr[ox] += wv * xr[ox];
  });
}

// dL/dx plane of one (n, c): each tap scatters w[tap] * gy back to the inputs it read.
template <typename T>
HWNAS_HD void dw_grad_input_plane(const T* gp, const T* wp, T* gxp, const Segment& s, int H, int W, T* phases) {
  T* target = s.stride == 2 ? phases : gxp;
  const int size = s.stride == 2 ? 2 * H * ((W + 1) / 2) : H * W;
  for (int i = 0; i < size; ++i) target[i] = T(0);
  for_each_tap_row(s, H, W, gxp, phases, [&](int tap, T* xr, int oy, int lo, int hi) {
    const T wv = wp[tap];
    const T* gr = gp + (hwnas_index)oy * s.w_out;
    for (int ox = lo; ox < hi; ++ox) xr[ox] += wv * gr[ox];
  });
  if (s.stride == 2) merge_phases(phases, gxp, H, W);
}

// dL/dw[tap] contribution of one (n, c) plane pair: a dot product per tap.
template <typename T>
HWNAS_HD void dw_grad_weight_plane(const T* xp, const T* gp, T* gwp, const Segment& s, int H, int W, T* phases) {
  if (s.stride == 2) split_phases(xp, phases, H, W);
  for_each_tap_row(s, H, W, const_cast<T*>(xp), phases, [&](int tap, const T* xr, int oy, int lo, int hi) {
    const T* gr = gp + (hwnas_index)oy * s.w_out;
    T acc = T(0);
    HWNAS_SIMD_SUM(acc)
    for (int ox = lo; ox < hi; ++ox) acc += xr[ox] * gr[ox];
    gwp[tap] += acc;
  });
}
