// Mixed depthwise convolution on the GPU: forward, grad-input, grad-weight over the
// concatenated channels of a multi-branch layer (math in mixed_dw.h, shared with the CPU
// twin). Storage fp32, fp16 or bf16; accumulation always fp32.
//
// Compiled at run time with NVRTC (hwnas/kernels/cuda.py) and by the tests with nvcc
// -Xptxas -v for sm_80 and sm_90 (zero spills required). Kernel names are extern "C" so the
// driver API finds them: mixed_dw_{forward,grad_input,grad_weight}_{f32,f16,bf16}.
//
// Bytes moved (fp32, per layer, hidden tensor of E elements, output O elements): the kernel
// reads the hidden tensor once and writes the outputs once (4E + 4O bytes), for all
// branches in one launch; the unfused layer runs one depthwise conv per branch, each reading
// its slice of the hidden tensor: the same bytes, in K launches. Arithmetic intensity stays
// ~k^2/4 FLOP per byte: the win is launches and the passes fused around it (see README).
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

// One thread per output element, grid-stride over all segments' outputs.
template <typename T, typename Load>
__device__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                               const SegmentTable& t, hwnas_index total) {
  for (hwnas_index i = blockIdx.x * (hwnas_index)blockDim.x + threadIdx.x; i < total;
       i += (hwnas_index)gridDim.x * blockDim.x) {
    const Segment& s = t.seg[segment_of_output(t, i)];
    hwnas_index r = i - s.out_offset;
    const int ox = (int)(r % s.w_out); r /= s.w_out;
    const int oy = (int)(r % s.h_out); r /= s.h_out;
    const int c = (int)(r % s.channels);
    const int n = (int)(r / s.channels);
    store(y + i, dw_forward_at<T, float>(x, w, t, s, n, c, oy, ox, Load()));
  }
}

// One thread per input element of the concatenated tensor.
template <typename T, typename Load>
__device__ void grad_input_kernel(const T* __restrict__ gy, const T* __restrict__ w, T* __restrict__ gx,
                                  const SegmentTable& t) {
  const hwnas_index total = (hwnas_index)t.N * t.C * t.H * t.W;
  for (hwnas_index i = blockIdx.x * (hwnas_index)blockDim.x + threadIdx.x; i < total;
       i += (hwnas_index)gridDim.x * blockDim.x) {
    hwnas_index r = i;
    const int ix = (int)(r % t.W); r /= t.W;
    const int iy = (int)(r % t.H); r /= t.H;
    const int cg = (int)(r % t.C);
    const int n = (int)(r / t.C);
    const Segment& s = t.seg[segment_of_channel(t, cg)];
    store(gx + i, dw_grad_input_at<T, float>(gy, w, s, n, cg - s.c_begin, iy, ix, Load()));
  }
}

// One block per weight tap (segment channel c, ky, kx): its threads reduce over (n, oy).
// blockIdx.x enumerates all taps of all segments in weight order (weight_offset + tap).
template <typename T, typename Load>
__device__ void grad_weight_kernel(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gw,
                                   const SegmentTable& t) {
  const hwnas_index tap = blockIdx.x;
  int si = 0;
  while (si + 1 < t.count && tap >= t.seg[si + 1].weight_offset) ++si;
  const Segment& s = t.seg[si];
  const int local = (int)(tap - s.weight_offset);
  const int kk = s.kernel * s.kernel;
  const int c = local / kk, ky = local % kk / s.kernel, kx = local % s.kernel;
  float acc = 0.f;
  for (int row = threadIdx.x; row < t.N * s.h_out; row += blockDim.x)
    acc += dw_grad_weight_row<T, float>(x, gy, t, s, row / s.h_out, c, ky, kx, row % s.h_out, Load());
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

#define HWNAS_INSTANTIATE(SUFFIX, T, LOAD)                                                                    \
  extern "C" __global__ void __launch_bounds__(256, 1) mixed_dw_forward_##SUFFIX(                              \
      const T* x, const T* w, T* y, const SegmentTable t, hwnas_index total) {                               \
    forward_kernel<T, LOAD>(x, w, y, t, total);                                                              \
  }                                                                                                          \
  extern "C" __global__ void __launch_bounds__(256, 1) mixed_dw_grad_input_##SUFFIX(                           \
      const T* gy, const T* w, T* gx, const SegmentTable t) {                                                \
    grad_input_kernel<T, LOAD>(gy, w, gx, t);                                                                \
  }                                                                                                          \
  extern "C" __global__ void __launch_bounds__(256, 1) mixed_dw_grad_weight_##SUFFIX(                          \
      const T* x, const T* gy, T* gw, const SegmentTable t) {                                                \
    grad_weight_kernel<T, LOAD>(x, gy, gw, t);                                                               \
  }

HWNAS_INSTANTIATE(f32, float, LoadF32)
HWNAS_INSTANTIATE(f16, __half, LoadF16)
HWNAS_INSTANTIATE(bf16, __nv_bfloat16, LoadBF16)
