// CPU twin of mixed_dw.cu: the same math (mixed_dw.h), parallelised over (n, channel) with
// OpenMP. Serves as the CPU implementation of the fused layer and as the test of the CUDA
// kernels' indexing on machines without a GPU. Every kernel takes the optional BN1+ReLU
// prologue (scale, shift: null for the plain convolution; see mixed_dw.h). Built by hwnas/kernels/cpu.py with the system
// C++ compiler; called through ctypes on raw tensor pointers.
#include "mixed_dw.h"
#include "mixed_dw_planes.h"

#include <cstddef>
#include <vector>

namespace {

template <typename T>
struct Identity {
  inline T operator()(T v) const { return v; }
};

// The prologue's backward, part 1, over one (n, c) plane of dL/da (in place): ReLU mask and
// the channel's running sums of g and g * (h - mean) (see relu_mask in mixed_dw.h).
template <typename T>
inline void mask_plane(T* gp, const T* hp, int size, T scale, T shift, T mean, T* sum_g, T* sum_gh) {
  T s1 = T(0), s2 = T(0);
  HWNAS_SIMD_SUM2(s1, s2)
  for (int i = 0; i < size; ++i) {
    const T g = relu_mask(gp[i], hp[i], scale, shift);
    gp[i] = g;
    s1 += g;
    s2 += g * (hp[i] - mean);
  }
  *sum_g += s1;
  *sum_gh += s2;
}

// A channel's finish step that only stores its sums (sums[2c], sums[2c + 1]) under the prologue.
template <typename T>
inline auto store_sums(BnRelu<T> bn, T* sums) {
  return [=](const Segment&, int, int cg, T sum_g, T sum_gh) {
    if (bn.scale) {
      sums[2 * cg] = sum_g;
      sums[2 * cg + 1] = sum_gh;
    }
  };
}

// Per-channel coefficients of the prologue's backward (bn_backward_coefficients) from the sums.
template <typename T>
void bn_coefficients(const T* sums, const T* scale, const T* invstd, const T* mean, T* coef, const SegmentTable& t) {
  const T count = T((double)t.N * t.H * t.W);
  for (int c = 0; c < t.C; ++c)
    bn_backward_coefficients(sums[2 * c], sums[2 * c + 1], scale[c], invstd, mean[c], c, count, coef + 3 * c);
}

// ---- per-element forms: the CUDA kernels' indexing, checked on the CPU ----
template <typename T>
void forward(const T* w, BnRelu<T> bn, const SegmentTable& t) {
  for (int si = 0; si < t.count; ++si) {
    const Segment s = t.seg[si];
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < t.N; ++n)
      for (int c = 0; c < s.channels; ++c) {
        T* yp = output_block<T>(s) + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out;
        for (int oy = 0; oy < s.h_out; ++oy)
          for (int ox = 0; ox < s.w_out; ++ox)
            yp[oy * s.w_out + ox] = dw_forward_at<T, T>(w, t, s, n, c, oy, ox, bn, Identity<T>());
      }
  }
}

// The channel loop of the grad_input forms, run by the threads of an enclosing parallel region:
// channels outermost (batch inside), so each thread owns its channels' sums. plane_of(gp, si, n, c)
// (si: the segment's index) writes one (n, c) plane of dL/da to gp = dest_of(n, at) (at: the plane's offset in a
// concatenated (N, C, H, W) tensor); with the prologue, the ReLU mask and the BN sums follow
// while that plane is in cache; finish(s, c, cg, sum_g, sum_gh) ends the channel.
template <typename T, typename PlaneOf, typename DestOf, typename Finish>
void grad_input_channels(BnRelu<T> bn, const SegmentTable& t, PlaneOf plane_of, DestOf dest_of, Finish finish) {
  const int plane = t.H * t.W;
#pragma omp for schedule(static)
  for (int cg = 0; cg < t.C; ++cg) {
    const int si = segment_of_channel(t, cg);
    const Segment s = t.seg[si];
    const int c = cg - s.c_begin;
    T sum_g = T(0), sum_gh = T(0);
    for (int n = 0; n < t.N; ++n) {
      const hwnas_index at = ((hwnas_index)n * t.C + cg) * plane;
      T* gp = dest_of(n, at);
      plane_of(gp, si, n, c);
      if (bn.scale)
        mask_plane(gp, input_plane<const T>(s, n, c, plane), plane, bn.scale[cg], bn.shift[cg], bn.mean[cg], &sum_g,
                   &sum_gh);
    }
    finish(s, c, cg, sum_g, sum_gh);
  }
}

// Every segment's plane geometry (mixed_dw_planes.h), indexed as the table's segments.
inline std::vector<PlaneGeometry> plane_geometries(const SegmentTable& t) {
  std::vector<PlaneGeometry> out;
  for (int i = 0; i < t.count; ++i) out.push_back(plane_geometry(t.seg[i], t.H, t.W));
  return out;
}

// The grad_input_channels plane_of of the plane forms: dL/da of one (n, c) into gp.
template <typename T>
inline auto grad_input_plane_of(const T* w, const SegmentTable& t, const std::vector<PlaneGeometry>& geometry,
                                T* scratch) {
  return [=, &t, &geometry](T* gp, int si, int n, int c) {
    const Segment& s = t.seg[si];
    dw_grad_input_plane(output_block<const T>(s) + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out,
                        w + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel, gp, s, geometry[si], t.H, t.W,
                        scratch);
  };
}

// dL/da into gx (masked, with the sums, under the prologue), as the CUDA grad_input kernel.
template <typename T>
void grad_input(const T* w, T* gx, BnRelu<T> bn, T* sums, const SegmentTable& t) {
#pragma omp parallel
  grad_input_channels(
      bn, t,
      [&](T* gp, int si, int n, int c) {
        const Segment& s = t.seg[si];
        for (int iy = 0; iy < t.H; ++iy)
          for (int ix = 0; ix < t.W; ++ix) gp[iy * t.W + ix] = dw_grad_input_at<T, T>(w, s, n, c, iy, ix, Identity<T>());
      },
      [&](int, hwnas_index at) { return gx + at; }, store_sums(bn, sums));
}
template <typename T>
void grad_weight(T* gw, BnRelu<T> bn, const SegmentTable& t) {
  for (int si = 0; si < t.count; ++si) {
    const Segment s = t.seg[si];
#pragma omp parallel for schedule(static)
    for (int c = 0; c < s.channels; ++c)
      for (int ky = 0; ky < s.kernel; ++ky)
        for (int kx = 0; kx < s.kernel; ++kx) {
          T acc = T(0);
          for (int n = 0; n < t.N; ++n)
            for (int oy = 0; oy < s.h_out; ++oy)
              acc += dw_grad_weight_row<T, T>(t, s, n, c, ky, kx, oy, bn, Identity<T>());
          gw[s.weight_offset + ((hwnas_index)c * s.kernel + ky) * s.kernel + kx] = acc;
        }
  }
}

// The prologue's backward, part 2, in place: g <- dL/dh (bn_backward_at); g is concatenated.
template <typename T>
void bn_backward(T* g, const T* coef, const SegmentTable& t) {
  const int plane = t.H * t.W;
#pragma omp parallel for collapse(2) schedule(static)
  for (int n = 0; n < t.N; ++n)
    for (int c = 0; c < t.C; ++c) {
      const T* hp = channel_input<const T>(t, n, c);
      T* gp = g + ((hwnas_index)n * t.C + c) * plane;
      for (int i = 0; i < plane; ++i) gp[i] = bn_backward_at(gp[i], hp[i], coef, c);
    }
}

// Batch mean and (biased) variance per channel, for the prologue's batch norm in training.
// torch.var_mean over (N, H, W) of an NCHW tensor takes ~10 passes' time on the CPU; this is one.
// Sums are of x - K with K the channel's first value (shifted data: no cancellation when the
// mean dwarfs the spread), vectorised per plane in T and accumulated over planes in double.
template <typename T>
void channel_stats(T* mean, T* var, const SegmentTable& t) {
  const int plane = t.H * t.W;
#pragma omp parallel for schedule(static)
  for (int c = 0; c < t.C; ++c) {
    const T K = channel_input<const T>(t, 0, c)[0];
    double s1 = 0, s2 = 0;
    for (int n = 0; n < t.N; ++n) {
      const T* p = channel_input<const T>(t, n, c);
      T a = T(0), b = T(0);
      HWNAS_SIMD_SUM2(a, b)
      for (int i = 0; i < plane; ++i) {
        const T d = p[i] - K;
        a += d;
        b += d * d;
      }
      s1 += a;
      s2 += b;
    }
    const double count = (double)t.N * plane, m = s1 / count;
    mean[c] = T(K + m);
    var[c] = T(s2 / count - m * m > 0 ? s2 / count - m * m : 0);
  }
}

// ---- plane forms: the fast path of the fused layer on the CPU ----

template <typename T>
void forward_fast(const T* w, BnRelu<T> bn, const SegmentTable& t) {
  const std::vector<PlaneGeometry> geometry = plane_geometries(t);
  for (int si = 0; si < t.count; ++si) {
    const Segment s = t.seg[si];
    const PlaneGeometry& pg = geometry[si];
#pragma omp parallel
    {
      std::vector<T> scratch(plane_scratch_size<T>(t));
#pragma omp for collapse(2) schedule(static)
      for (int n = 0; n < t.N; ++n)
        for (int c = 0; c < s.channels; ++c)
          dw_forward_plane(input_plane<const T>(s, n, c, t.H * t.W),
                           w + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel,
                           output_block<T>(s) + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out, s, pg, t.H,
                           t.W, scratch.data(), plane_load(bn, s.c_begin + c));
    }
  }
}

template <typename T>
void grad_input_fast(const T* w, T* gx, BnRelu<T> bn, T* sums, const SegmentTable& t) {
  const std::vector<PlaneGeometry> geometry = plane_geometries(t);
#pragma omp parallel
  {
    std::vector<T> scratch(plane_scratch_size<T>(t));
    grad_input_channels(
        bn, t, grad_input_plane_of(w, t, geometry, scratch.data()),
        [&](int, hwnas_index at) { return gx + at; }, store_sums(bn, sums));
  }
}

// The prologue's whole backward in one pass, each channel while its planes are in cache: dL/da
// (masked, summed) into per-thread scratch, then the channel's coefficients, then dL/dh written
// over the input (the table's in_block) in place (h was read for the mask and is read for b*h
// first): no separate gradient buffer, no second pass over memory. invstd == nullptr: eval.
// Run grad_weight first (it reads h).
template <typename T>
void grad_input_bn_fast(const T* w, BnRelu<T> bn, const T* invstd, T* sums, const SegmentTable& t) {
  const int plane = t.H * t.W;
  const T count = T((double)t.N * plane);
  const std::vector<PlaneGeometry> geometry = plane_geometries(t);
#pragma omp parallel
  {
    std::vector<T> scratch(plane_scratch_size<T>(t));
    std::vector<T> g((size_t)t.N * plane);
    grad_input_channels(
        bn, t, grad_input_plane_of(w, t, geometry, scratch.data()),
        [&](int n, hwnas_index) { return g.data() + (size_t)n * plane; },
        [&](const Segment& s, int c, int cg, T sum_g, T sum_gh) {
          store_sums(bn, sums)(s, c, cg, sum_g, sum_gh);
          T coef[3];
          bn_backward_coefficients(sum_g, sum_gh, bn.scale[cg], invstd, bn.mean[cg], cg, count, coef);
          for (int n = 0; n < t.N; ++n) {
            T* hp = input_plane<T>(s, n, c, plane);
            const T* gp = g.data() + (size_t)n * plane;
#pragma omp simd
            for (int i = 0; i < plane; ++i) hp[i] = bn_backward_at(gp[i], hp[i], coef, 0);
          }
        });
  }
}

template <typename T>
void grad_weight_fast(T* gw, BnRelu<T> bn, const SegmentTable& t) {
  const std::vector<PlaneGeometry> geometry = plane_geometries(t);
#pragma omp parallel
  {
    std::vector<T> scratch(plane_scratch_size<T>(t));
#pragma omp for schedule(dynamic, 4)
    for (int cg = 0; cg < t.C; ++cg) {
      const int si = segment_of_channel(t, cg);
      const Segment s = t.seg[si];
      const int c = cg - s.c_begin;
      T* gwp = gw + s.weight_offset + (hwnas_index)c * s.kernel * s.kernel;
      for (int i = 0; i < s.kernel * s.kernel; ++i) gwp[i] = T(0);
      for (int n = 0; n < t.N; ++n)
        dw_grad_weight_plane(input_plane<const T>(s, n, c, t.H * t.W),
                             output_block<const T>(s) + ((hwnas_index)n * s.channels + c) * s.h_out * s.w_out, gwp, s,
                             geometry[si], t.H, t.W, scratch.data(), plane_load(bn, cg));
    }
  }
}

}  // namespace

// C entry points, called through ctypes (hwnas/kernels/cpu.py declares their argument types).
// The _fast variants run the plane forms, the others the per-element forms of the CUDA kernels.
// The inputs, outputs (forward) and output gradients (backward) are the segments' blocks in the table.
#define HWNAS_EXPORT(SUFFIX, T, VARIANT, IMPL)                                                                     \
  extern "C" void mixed_dw_forward##VARIANT##_##SUFFIX(const T* w, const T* scale, const T* shift,                 \
                                                       const SegmentTable* t) {                                    \
    forward##IMPL(w, BnRelu<T>{scale, shift, nullptr}, *t);                                                        \
  }                                                                                                                \
  extern "C" void mixed_dw_grad_input##VARIANT##_##SUFFIX(const T* w, T* gx, const T* scale, const T* shift,       \
                                                          const T* mean, T* sums, const SegmentTable* t) {         \
    grad_input##IMPL(w, gx, BnRelu<T>{scale, shift, mean}, sums, *t);                                              \
  }                                                                                                                \
  extern "C" void mixed_dw_grad_weight##VARIANT##_##SUFFIX(T* gw, const T* scale, const T* shift,                  \
                                                           const SegmentTable* t) {                                \
    grad_weight##IMPL(gw, BnRelu<T>{scale, shift, nullptr}, *t);                                                   \
  }

HWNAS_EXPORT(f32, float, , )
HWNAS_EXPORT(f64, double, , )
HWNAS_EXPORT(f32, float, _fast, _fast)
HWNAS_EXPORT(f64, double, _fast, _fast)

extern "C" {
void mixed_dw_bn_backward_f32(float* g, const float* coef, const SegmentTable* t) { bn_backward(g, coef, *t); }
void mixed_dw_bn_backward_f64(double* g, const double* coef, const SegmentTable* t) { bn_backward(g, coef, *t); }
void mixed_dw_channel_stats_f32(float* mean, float* var, const SegmentTable* t) { channel_stats(mean, var, *t); }
void mixed_dw_channel_stats_f64(double* mean, double* var, const SegmentTable* t) { channel_stats(mean, var, *t); }
void mixed_dw_bn_coefficients_f32(const float* sums, const float* scale, const float* invstd, const float* mean,
                                  float* coef, const SegmentTable* t) {
  bn_coefficients(sums, scale, invstd, mean, coef, *t);
}
void mixed_dw_bn_coefficients_f64(const double* sums, const double* scale, const double* invstd, const double* mean,
                                  double* coef, const SegmentTable* t) {
  bn_coefficients(sums, scale, invstd, mean, coef, *t);
}
void mixed_dw_grad_input_bn_f32(const float* w, const float* scale, const float* shift, const float* mean,
                                const float* invstd, float* sums, const SegmentTable* t) {
  grad_input_bn_fast(w, BnRelu<float>{scale, shift, mean}, invstd, sums, *t);
}
void mixed_dw_grad_input_bn_f64(const double* w, const double* scale, const double* shift, const double* mean,
                                const double* invstd, double* sums, const SegmentTable* t) {
  grad_input_bn_fast(w, BnRelu<double>{scale, shift, mean}, invstd, sums, *t);
}
int mixed_dw_segment_table_size(void) { return (int)sizeof(SegmentTable); }
}
