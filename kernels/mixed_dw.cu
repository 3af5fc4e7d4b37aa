// Mixed depthwise convolution on the GPU: forward, grad-input, grad-weight over the hidden
// channels of a multi-branch layer, inputs and outputs addressed through the segment table
// (math in mixed_dw.h, shared with the CPU twin). Storage fp32, fp16 or bf16; accumulation
// always fp32.
//
// Compiled at run time with NVRTC (hwnas/kernels/cuda.py) and by the tests with nvcc
// -Xptxas -v for sm_80 and sm_90 (zero spills required). Kernel names are extern "C" so the
// driver API finds them: mixed_dw_{forward,grad_input,grad_weight,bn_backward}_{f32,f16,bf16}
// and mixed_dw_bn_coefficients_f32.
//
// Every kernel takes the optional BN1+ReLU prologue (scale, shift per concatenated channel;
// null = plain convolution): the pre-BN hidden tensor h is read and relu(h*scale + shift)
// used, so the activated tensor is never written. grad_input then masks its result by the
// ReLU and accumulates the batch norm's per-channel sums (g, g*(h-mean)) in its epilogue,
// bn_coefficients turns the sums into per-channel coefficients, and bn_backward finishes dL/dh
// in place; the activated tensor is not kept. Passes and bytes moved: docs/kernel.md.
#include "mixed_dw.h"
#include <cuda_fp16.h>
#include <cuda_bf16.h>

struct LoadF32 {
  __device__ __forceinline__ float operator()(float v) const { return v; }
};
struct LoadF16 {
  __device__ __forceinline__ float operator()(__half v) const { return __half2float(v); }
};
struct LoadBF16 {
  __device__ __forceinline__ float operator()(__nv_bfloat16 v) const { return __bfloat162float(v); }
};
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// One thread per output element, grid-stride over all segments' outputs (out_offset numbering),
// each written to its segment's block.
template <typename T, typename Load>
__device__ void forward_kernel(const T* __restrict__ w, BnRelu<float> bn, const SegmentTable& t, hwnas_index total) {
  for (hwnas_index i = blockIdx.x * (hwnas_index)blockDim.x + threadIdx.x; i < total;
       i += (hwnas_index)gridDim.x * blockDim.x) {
    const Segment& s = t.seg[segment_of_output(t, i)];
    const hwnas_index local = i - s.out_offset;
    hwnas_index r = local;
    const int ox = (int)(r % s.w_out); r /= s.w_out;
    const int oy = (int)(r % s.h_out); r /= s.h_out;
    const int c = (int)(r % s.channels);
    const int n = (int)(r / s.channels);
    store(output_block<T>(s) + local, dw_forward_at<T, float>(w, t, s, n, c, oy, ox, bn, Load()));
  }
}

// One thread per input element of the concatenated tensor. With the prologue, the result is
// masked by the ReLU and the per-channel sums of g and g*(h-mean) gathered: first in shared memory
// per (n, c) plane the block touches (at most one slot per thread), then one global atomic
// per plane. The loop runs over block-aligned bases so every thread reaches __syncthreads.
template <typename T, typename Load>
__device__ void grad_input_kernel(const T* __restrict__ w, T* __restrict__ gx, BnRelu<float> bn,
                                  float* __restrict__ sums, const SegmentTable& t) {
  __shared__ float plane_sums[2 * 256];
  const hwnas_index total = (hwnas_index)t.N * t.C * t.H * t.W;
  const int plane = t.H * t.W;
  for (hwnas_index base = blockIdx.x * (hwnas_index)blockDim.x; base < total;
       base += (hwnas_index)gridDim.x * blockDim.x) {
    const hwnas_index i = base + threadIdx.x;
    const hwnas_index first_plane = base / plane;
    if (bn.scale) {
      plane_sums[2 * threadIdx.x] = plane_sums[2 * threadIdx.x + 1] = 0.f;
      __syncthreads();
    }
    if (i < total) {
      hwnas_index r = i;
      const int ix = (int)(r % t.W); r /= t.W;
      const int iy = (int)(r % t.H); r /= t.H;
      const int cg = (int)(r % t.C);
      const int n = (int)(r / t.C);
      const Segment& s = t.seg[segment_of_channel(t, cg)];
      float g = dw_grad_input_at<T, float>(w, s, n, cg - s.c_begin, iy, ix, Load());
      if (bn.scale) {
        const float hv = Load()(input_plane<const T>(s, n, cg - s.c_begin, plane)[iy * t.W + ix]);
        g = relu_mask(g, hv, bn.scale[cg], bn.shift[cg]);
        const int slot = (int)(i / plane - first_plane);
        atomicAdd(&plane_sums[2 * slot], g);
        atomicAdd(&plane_sums[2 * slot + 1], g * (hv - bn.mean[cg]));
      }
      store(gx + i, g);
    }
    if (bn.scale) {
      __syncthreads();
      const hwnas_index p = first_plane + threadIdx.x;
      if (p * plane < total && p * plane < base + blockDim.x) {
        const int c = (int)(p % t.C);
        atomicAdd(&sums[2 * c], plane_sums[2 * threadIdx.x]);
        atomicAdd(&sums[2 * c + 1], plane_sums[2 * threadIdx.x + 1]);
      }
      __syncthreads();
    }
  }
}

// The prologue's backward, part 2, in place: g <- dL/dh (bn_backward_at in mixed_dw.h).
template <typename T, typename Load>
__device__ void bn_backward_kernel(T* __restrict__ g, const float* __restrict__ coef, const SegmentTable& t) {
  const int plane = t.H * t.W;
  const hwnas_index total = (hwnas_index)t.N * t.C * plane;
  for (hwnas_index i = blockIdx.x * (hwnas_index)blockDim.x + threadIdx.x; i < total;
       i += (hwnas_index)gridDim.x * blockDim.x) {
    const int c = (int)(i / plane % t.C), n = (int)(i / plane / t.C), at = (int)(i % plane);
    const float hv = Load()(channel_input<const T>(t, n, c)[at]);
    store(g + i, bn_backward_at(Load()(g[i]), hv, coef, c));
  }
}

// The prologue's backward coefficients from grad_input's sums, one thread per channel
// (bn_backward_coefficients in mixed_dw.h). invstd == nullptr: eval. Storage-independent (fp32).
extern "C" __global__ void __launch_bounds__(256, 1) mixed_dw_bn_coefficients_f32(
    const float* sums, const float* scale, const float* invstd, const float* mean, float* coef,
    const SegmentTable t) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < t.C)
    bn_backward_coefficients(sums[2 * c], sums[2 * c + 1], scale[c], invstd, mean[c], c,
                             (float)t.N * t.H * t.W, coef + 3 * c);
}

// One block per weight tap (segment channel c, ky, kx): its threads reduce over (n, oy).
// blockIdx.x enumerates all taps of all segments in weight order (weight_offset + tap).
template <typename T, typename Load>
__device__ void grad_weight_kernel(T* __restrict__ gw, BnRelu<float> bn, const SegmentTable& t) {
  const hwnas_index tap = blockIdx.x;
  int si = 0;
  while (si + 1 < t.count && tap >= t.seg[si + 1].weight_offset) ++si;
  const Segment& s = t.seg[si];
  const int local = (int)(tap - s.weight_offset);
  const int kk = s.kernel * s.kernel;
  const int c = local / kk, ky = local % kk / s.kernel, kx = local % s.kernel;
  float acc = 0.f;
  for (int row = threadIdx.x; row < t.N * s.h_out; row += blockDim.x)
    acc += dw_grad_weight_row<T, float>(t, s, row / s.h_out, c, ky, kx, row % s.h_out, bn, Load());
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  __shared__ float warp_sums[32];
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    acc = threadIdx.x < (blockDim.x + 31) / 32 ? warp_sums[threadIdx.x] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (threadIdx.x == 0) store(gw + tap, acc);
  }
}

#define HWNAS_INSTANTIATE(SUFFIX, T, LOAD)                                                                     \
  extern "C" __global__ void __launch_bounds__(256, 1) mixed_dw_forward_##SUFFIX(                              \
      const T* w, const float* scale, const float* shift, const SegmentTable t, hwnas_index total) {           \
    forward_kernel<T, LOAD>(w, BnRelu<float>{scale, shift, nullptr}, t, total);                                \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(256, 1) mixed_dw_grad_input_##SUFFIX(                           \
      const T* w, T* gx, const float* scale, const float* shift, const float* mean, float* sums,               \
      const SegmentTable t) {                                                                                  \
    grad_input_kernel<T, LOAD>(w, gx, BnRelu<float>{scale, shift, mean}, sums, t);                             \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(256, 1) mixed_dw_grad_weight_##SUFFIX(                          \
      T* gw, const float* scale, const float* shift, const SegmentTable t) {                                   \
    grad_weight_kernel<T, LOAD>(gw, BnRelu<float>{scale, shift, nullptr}, t);                                  \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(256, 1) mixed_dw_bn_backward_##SUFFIX(                          \
      T* g, const float* coef, const SegmentTable t) {                                                         \
    bn_backward_kernel<T, LOAD>(g, coef, t);                                                                   \
  }

HWNAS_INSTANTIATE(f32, float, LoadF32)
HWNAS_INSTANTIATE(f16, __half, LoadF16)
HWNAS_INSTANTIATE(bf16, __nv_bfloat16, LoadBF16)
