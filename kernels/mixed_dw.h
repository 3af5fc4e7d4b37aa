// Mixed depthwise convolution: the math, written once for the CUDA kernels (mixed_dw.cu) and
// their CPU twin (mixed_dw_cpu.cpp).
//
// The input is (N, C, H, W) logically: the hidden channels of all active branches of one
// multi-branch layer. Segment s owns channels [c_begin, c_begin + channels) and has its own
// kernel size, dilation, stride and padding. Its input channels live at in_block, image n
// in_batch_stride values after image n - 1: either channels of one concatenated tensor (stride
// C*H*W: one expand GEMM wrote them all) or a tensor of its own (stride channels*H*W: one
// expand conv per branch). Its output is a contiguous (N, channels, h_out, w_out) tensor of its
// own at out_block (the output in the forward pass, the output's gradient in the backward pass),
// so each branch's projection reads it as an ordinary tensor and the backward reads gradients
// where autograd left them: no split, no concatenation. out_offset numbers the outputs of all
// segments in one sequence (the CUDA forward's grid). Weights: segment s's (channels, k, k)
// block at weight_offset. Gradients of the input (grad_input's gx) are one concatenated
// (N, C, H, W) tensor, or written over the input itself (the CPU's grad_input_bn).
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
#define HWNAS_PRAGMA(text) _Pragma(#text)
#define HWNAS_SIMD_SUM(acc) HWNAS_PRAGMA(omp simd reduction(+ : acc))
#define HWNAS_SIMD_SUM2(a, b) HWNAS_PRAGMA(omp simd reduction(+ : a, b))
#else
#define HWNAS_SIMD_SUM(acc)
#define HWNAS_SIMD_SUM2(a, b)
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
  unsigned long long out_block;  // address of the segment's output (or output-gradient) tensor
  unsigned long long in_block;   // address of its first input channel in image 0
  hwnas_index in_batch_stride;   // values from one image to the next in its input
};

struct SegmentTable {
  int count;
  int N, C, H, W;  // the concatenated input
  Segment seg[HWNAS_MAX_SEGMENTS];
};

// The first batch norm and ReLU of the branches, applied on load: the kernels read the
// pre-BN hidden tensor h and use a = relu(h * scale[c] + shift[c]) (c: concatenated channel),
// so the activated tensor is never written to memory nor kept for the backward pass.
// scale == nullptr: the input is used as it is (the plain mixed depthwise convolution).
// mean (grad_input only): the batch norm's mean, so the epilogue sums g * (h - mean), centred:
// uncentred sums of g * h cancel badly in fp32 when |mean| >> std.
template <typename Acc>
struct BnRelu {
  const Acc* scale;
  const Acc* shift;
  const Acc* mean;
};

template <typename Acc>
HWNAS_HD Acc bn_relu_at(Acc v, Acc scale, Acc shift) {
  const Acc a = v * scale + shift;
  return a > Acc(0) ? a : Acc(0);
}

// Segment s's output (forward) or output gradient (backward) block.
template <typename T>
HWNAS_HD T* output_block(const Segment& s) {
  return reinterpret_cast<T*>(s.out_block);
}

// The (H x W) input plane of segment s's channel c (local) in image n.
template <typename T>
HWNAS_HD T* input_plane(const Segment& s, int n, int c, int plane) {
  return reinterpret_cast<T*>(s.in_block) + n * s.in_batch_stride + (hwnas_index)c * plane;
}

// Index of the segment whose output block holds output number i (out_offset numbering).
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

// The input plane of concatenated channel cg in image n (through its segment).
template <typename T>
HWNAS_HD T* channel_input(const SegmentTable& t, int n, int cg) {
  const Segment& s = t.seg[segment_of_channel(t, cg)];
  return input_plane<T>(s, n, cg - s.c_begin, t.H * t.W);
}

// y[n, c, oy, ox] of segment s (c local to the segment).
template <typename T, typename Acc, typename Load>
HWNAS_HD Acc dw_forward_at(const T* w, const SegmentTable& t, const Segment& s, int n, int c, int oy, int ox,
                           BnRelu<Acc> bn, Load load) {
  const T* xp = input_plane<const T>(s, n, c, t.H * t.W);
  const T* wp = w + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel;
  const int iy0 = oy * s.stride - s.padding, ix0 = ox * s.stride - s.padding;
  const bool fused = bn.scale != nullptr;
  const Acc scale = fused ? bn.scale[s.c_begin + c] : Acc(1), shift = fused ? bn.shift[s.c_begin + c] : Acc(0);
  Acc acc = Acc(0);
  for (int ky = 0; ky < s.kernel; ++ky) {
    const int iy = iy0 + ky * s.dilation;
    if (iy < 0 || iy >= t.H) continue;
    for (int kx = 0; kx < s.kernel; ++kx) {
      const int ix = ix0 + kx * s.dilation;
      if (ix < 0 || ix >= t.W) continue;
      const Acc v = load(xp[iy * t.W + ix]);
      acc += (fused ? bn_relu_at(v, scale, shift) : v) * load(wp[ky * s.kernel + kx]);
    }
  }
  return acc;
}

// dL/dx[n, c, iy, ix] (c local to segment s), gathered from the output gradients (the block)
// it fed: no atomics.
template <typename T, typename Acc, typename Load>
HWNAS_HD Acc dw_grad_input_at(const T* w, const Segment& s, int n, int c, int iy, int ix, Load load) {
  const T* gp = output_block<const T>(s) + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out;
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

// One term-row of dL/dw[c, ky, kx]: the sum over ox of x * gy for a fixed (n, oy) (gy: the block).
template <typename T, typename Acc, typename Load>
HWNAS_HD Acc dw_grad_weight_row(const SegmentTable& t, const Segment& s, int n, int c, int ky, int kx, int oy,
                                BnRelu<Acc> bn, Load load) {
  const int iy = oy * s.stride - s.padding + ky * s.dilation;
  if (iy < 0 || iy >= t.H) return Acc(0);
  const T* xr = input_plane<const T>(s, n, c, t.H * t.W) + iy * t.W;
  const T* gr = output_block<const T>(s) + (((hwnas_index)n * s.channels + c) * s.h_out + oy) * s.w_out;
  const bool fused = bn.scale != nullptr;
  const Acc scale = fused ? bn.scale[s.c_begin + c] : Acc(1), shift = fused ? bn.shift[s.c_begin + c] : Acc(0);
  Acc acc = Acc(0);
  for (int ox = 0; ox < s.w_out; ++ox) {
    const int ix = ox * s.stride - s.padding + kx * s.dilation;
    if (ix < 0 || ix >= t.W) continue;
    const Acc v = load(xr[ix]);
    acc += (fused ? bn_relu_at(v, scale, shift) : v) * load(gr[ox]);
  }
  return acc;
}

// The backward of the prologue, part 1, at one element of channel c: the gradient reaching
// a = relu(bn(h)) is masked by the ReLU; the per-channel sums of the masked gradient g and of
// g * (h - mean) are what the batch norm's backward needs (accumulated by the caller).
template <typename Acc>
HWNAS_HD Acc relu_mask(Acc grad_a, Acc h, Acc scale, Acc shift) {
  return h * scale + shift > Acc(0) ? grad_a : Acc(0);
}

// The backward of the prologue, part 2, once the sums are known: dL/dh = a*g + b*h + d with
// per-channel coefficients coef[3c..3c+2]. Training (the batch statistics depend on h), from
// the channel's sums sum_g = sum(g), sum_gh = sum(g * (h - mean)) over its M = N*H*W values:
// a = scale, b = -scale * invstd^2 * sum_gh / M, d = -scale * sum_g / M - b * mean.
// Eval (invstd == nullptr: the statistics are constants): a = scale, b = d = 0.
template <typename Acc>
HWNAS_HD void bn_backward_coefficients(Acc sum_g, Acc sum_gh, Acc scale, const Acc* invstd, Acc mean, int c,
                                       Acc count, Acc* coef) {
  const Acc b = invstd ? -scale * invstd[c] * invstd[c] * sum_gh / count : Acc(0);
  coef[0] = scale;
  coef[1] = b;
  coef[2] = invstd ? -scale * sum_g / count - b * mean : Acc(0);
}

template <typename Acc>
HWNAS_HD Acc bn_backward_at(Acc g, Acc h, const Acc* coef, int c) {
  return coef[3 * c] * g + coef[3 * c + 1] * h + coef[3 * c + 2];
}
