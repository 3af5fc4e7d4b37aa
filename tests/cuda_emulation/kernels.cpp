// kernels/mixed_dw.cu compiled for the CUDA emulation (cuda_emulation.h), and a launch entry
// point with cuLaunchKernel's argument convention: arguments[i] is the address of the kernel's
// i-th argument (hwnas.kernels.cuda.pack_arguments builds them). Also a few kernels that break
// CUDA's rules on purpose, so the tests can show that the emulation reports them.
#include "cuda_emulation.h"

#include "mixed_dw.cu"

#include <cstring>
#include <type_traits>
#include <utility>

namespace {

struct Kernel {
  const char* name;
  size_t arity;
  void (*call)(void** arguments);
};

template <typename... Args>
struct Signature {
  static constexpr size_t arity = sizeof...(Args);
  template <void (*F)(Args...), size_t... I>
  static void call_with(void** arguments, std::index_sequence<I...>) {
    F(*static_cast<std::decay_t<Args>*>(arguments[I])...);
  }
  template <void (*F)(Args...)>
  static void call(void** arguments) {
    call_with<F>(arguments, std::index_sequence_for<Args...>{});
  }
};

template <typename... Args>
Signature<Args...> signature_of(void (*)(Args...));

#define KERNEL(f) \
  Kernel { #f, decltype(signature_of(&f))::arity, &decltype(signature_of(&f))::template call<&f> }

}  // namespace

// ---- kernels that break the rules (the emulation's own negative controls) ------------------

// Thread 0 leaves before the barrier the others wait at.
extern "C" __global__ void emulation_exit_before_barrier(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Lane 5 skips a full-warp shuffle.
extern "C" __global__ void emulation_lane_skips_shuffle(float* out) {
  float v = (float)threadIdx.x;
  if (threadIdx.x % 32 != 5) v = __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// out[t] = the value lane t reads with __shfl_down_sync(delta, width) from lanes holding their
// thread index.
extern "C" __global__ void emulation_shuffle_down(float* out, int delta, int width) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (float)threadIdx.x, (unsigned)delta, width);
}

// Each thread writes its slot of shared memory, then reads its neighbour's: correct only with
// the barrier between (barrier == 0 leaves it out).
extern "C" __global__ void emulation_neighbour(float* out, int barrier) {
  __shared__ float slots[1024];
  slots[threadIdx.x] = (float)(blockIdx.x * 1000 + threadIdx.x);
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

// ---- the launch -------------------------------------------------------------------------

namespace {

const Kernel KERNELS[] = {
    KERNEL(mixed_dw_forward_f32),      KERNEL(mixed_dw_forward_f16),      KERNEL(mixed_dw_forward_bf16),
    KERNEL(mixed_dw_grad_input_f32),   KERNEL(mixed_dw_grad_input_f16),   KERNEL(mixed_dw_grad_input_bf16),
    KERNEL(mixed_dw_grad_weight_f32),  KERNEL(mixed_dw_grad_weight_f16),  KERNEL(mixed_dw_grad_weight_bf16),
    KERNEL(mixed_dw_bn_backward_f32),  KERNEL(mixed_dw_bn_backward_f16),  KERNEL(mixed_dw_bn_backward_bf16),
    KERNEL(mixed_dw_bn_coefficients_f32),
    KERNEL(emulation_exit_before_barrier), KERNEL(emulation_lane_skips_shuffle), KERNEL(emulation_shuffle_down),
    KERNEL(emulation_neighbour),
};

}  // namespace

// Launches kernel `name` on grid x block threads; arguments: `count` addresses, one per argument.
// 0 on success; otherwise 1 and a message in error.
extern "C" int emulation_launch(const char* name, unsigned grid, unsigned block, void** arguments, size_t count,
                                int order, unsigned seed, char* error, size_t error_size) {
  std::string message;
  const Kernel* kernel = nullptr;
  for (const Kernel& k : KERNELS)
    if (std::strcmp(k.name, name) == 0) kernel = &k;
  if (!kernel) {
    message = std::string("no kernel named ") + name;
  } else if (count != kernel->arity) {
    message = std::string(name) + " takes " + std::to_string(kernel->arity) + " arguments, given " +
              std::to_string(count);
  } else if (cuda_emulation::run_grid(grid, block, kernel->call, arguments,
                                      static_cast<cuda_emulation::Order>(order), seed, &message)) {
    return 0;
  }
  std::snprintf(error, error_size, "%s", message.c_str());
  return 1;
}

extern "C" void emulation_set_shared_memory(void** addresses, const size_t* sizes, size_t count) {
  cuda_emulation::set_shared_memory(addresses, sizes, count);
}
