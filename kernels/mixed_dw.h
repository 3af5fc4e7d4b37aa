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
