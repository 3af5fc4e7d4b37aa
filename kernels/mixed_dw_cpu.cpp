// CPU twin of mixed_dw.cu: the same math (mixed_dw.h), parallelised over (n, channel) with
// OpenMP. Serves as the CPU implementation of the fused layer and as the test of the CUDA
// kernels' indexing on machines without a GPU. Built by hwnas/kernels/cpu.py with the system
// C++ compiler; called through ctypes on raw tensor pointers.
#include "mixed_dw.h"

#include <cstddef>
#include <vector>

namespace {

template <typename T>
struct Identity {
  inline T operator()(T v) const { return v; }
};

// ---- per-element forms: the CUDA kernels' indexing, checked on the CPU ----
template <typename T>
void forward(const T* x, const T* w, T* y, const SegmentTable& t) {
  for (int si = 0; si < t.count; ++si) {
    const Segment s = t.seg[si];
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < t.N; ++n)
      for (int c = 0; c < s.channels; ++c) {
        T* yp = y + s.out_offset + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out;
        for (int oy = 0; oy < s.h_out; ++oy)
          for (int ox = 0; ox < s.w_out; ++ox)
            yp[oy * s.w_out + ox] = dw_forward_at<T, T>(x, w, t, s, n, c, oy, ox, Identity<T>());
      }
  }
}

template <typename T>
void grad_input(const T* gy, const T* w, T* gx, const SegmentTable& t) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < t.N; ++n)
    for (int cg = 0; cg < t.C; ++cg) {
      const Segment s = t.seg[segment_of_channel(t, cg)];
      const int c = cg - s.c_begin;
      T* gp = gx + ((hwnas_index)n * t.C + cg) * t.H * t.W;
      for (int iy = 0; iy < t.H; ++iy)
        for (int ix = 0; ix < t.W; ++ix) gp[iy * t.W + ix] = dw_grad_input_at<T, T>(gy, w, s, n, c, iy, ix, Identity<T>());
    }
}

template <typename T>
void grad_weight(const T* x, const T* gy, T* gw, const SegmentTable& t) {
  for (int si = 0; si < t.count; ++si) {
    const Segment s = t.seg[si];
#pragma omp parallel for schedule(static)
    for (int c = 0; c < s.channels; ++c)
      for (int ky = 0; ky < s.kernel; ++ky)
        for (int kx = 0; kx < s.kernel; ++kx) {
          T acc = T(0);
          for (int n = 0; n < t.N; ++n)
            for (int oy = 0; oy < s.h_out; ++oy) acc += dw_grad_weight_row<T, T>(x, gy, t, s, n, c, ky, kx, oy, Identity<T>());
          gw[s.weight_offset + ((hwnas_index)c * s.kernel + ky) * s.kernel + kx] = acc;
        }
  }
}

// ---- plane forms: the fast path of the fused layer on the CPU ----
inline std::size_t phase_size(const SegmentTable& t) { return 2 * (std::size_t)t.H * ((t.W + 1) / 2); }

template <typename T>
void forward_fast(const T* x, const T* w, T* y, const SegmentTable& t) {
  for (int si = 0; si < t.count; ++si) {
    const Segment s = t.seg[si];
#pragma omp parallel
    {
      std::vector<T> phases(phase_size(t));
#pragma omp for collapse(2) schedule(static)
      for (int n = 0; n < t.N; ++n)
        for (int c = 0; c < s.channels; ++c)
          dw_forward_plane(x + ((hwnas_index)n * t.C + s.c_begin + c) * t.H * t.W,
                           w + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel,
                           y + s.out_offset + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out, s, t.H, t.W,
                           phases.data());
    }
  }
}

template <typename T>
void grad_input_fast(const T* gy, const T* w, T* gx, const SegmentTable& t) {
#pragma omp parallel
  {
    std::vector<T> phases(phase_size(t));
#pragma omp for collapse(2) schedule(static)
    for (int n = 0; n < t.N; ++n)
      for (int cg = 0; cg < t.C; ++cg) {
        const Segment s = t.seg[segment_of_channel(t, cg)];
        const int c = cg - s.c_begin;
        dw_grad_input_plane(gy + s.out_offset + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out,
                            w + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel,
                            gx + ((hwnas_index)n * t.C + cg) * t.H * t.W, s, t.H, t.W, phases.data());
      }
  }
}

template <typename T>
void grad_weight_fast(const T* x, const T* gy, T* gw, const SegmentTable& t) {
#pragma omp parallel
  {
    std::vector<T> phases(phase_size(t));
#pragma omp for schedule(dynamic, 4)
    for (int cg = 0; cg < t.C; ++cg) {
      const Segment s = t.seg[segment_of_channel(t, cg)];
      const int c = cg - s.c_begin;
      T* gwp = gw + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel;
      for (int i = 0; i < s.kernel * s.kernel; ++i) gwp[i] = T(0);
      for (int n = 0; n < t.N; ++n)
        dw_grad_weight_plane(x + ((hwnas_index)n * t.C + cg) * t.H * t.W,
                             gy + s.out_offset + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out, gwp, s,
                             t.H, t.W, phases.data());
    }
  }
}

}  // namespace

extern "C" {
void mixed_dw_forward_f32(const float* x, const float* w, float* y, const SegmentTable* t) { forward(x, w, y, *t); }
void mixed_dw_forward_f64(const double* x, const double* w, double* y, const SegmentTable* t) { forward(x, w, y, *t); }
void mixed_dw_grad_input_f32(const float* gy, const float* w, float* gx, const SegmentTable* t) { grad_input(gy, w, gx, *t); }
void mixed_dw_grad_input_f64(const double* gy, const double* w, double* gx, const SegmentTable* t) { grad_input(gy, w, gx, *t); }
void mixed_dw_grad_weight_f32(const float* x, const float* gy, float* gw, const SegmentTable* t) { grad_weight(x, gy, gw, *t); }
void mixed_dw_grad_weight_f64(const double* x, const double* gy, double* gw, const SegmentTable* t) { grad_weight(x, gy, gw, *t); }
void mixed_dw_forward_fast_f32(const float* x, const float* w, float* y, const SegmentTable* t) { forward_fast(x, w, y, *t); }
void mixed_dw_forward_fast_f64(const double* x, const double* w, double* y, const SegmentTable* t) { forward_fast(x, w, y, *t); }
void mixed_dw_grad_input_fast_f32(const float* gy, const float* w, float* gx, const SegmentTable* t) { grad_input_fast(gy, w, gx, *t); }
void mixed_dw_grad_input_fast_f64(const double* gy, const double* w, double* gx, const SegmentTable* t) { grad_input_fast(gy, w, gx, *t); }
void mixed_dw_grad_weight_fast_f32(const float* x, const float* gy, float* gw, const SegmentTable* t) { grad_weight_fast(x, gy, gw, *t); }
void mixed_dw_grad_weight_fast_f64(const double* x, const double* gy, double* gw, const SegmentTable* t) { grad_weight_fast(x, gy, gw, *t); }
int mixed_dw_segment_table_size(void) { return (int)sizeof(SegmentTable); }
}
