// A test-only emulation of CUDA's execution model on the host, enough to compile
// kernels/mixed_dw.cu as C++ and run its block-level logic on a CPU (the approach of AMD's
// HIP-CPU, much reduced). Every thread of a block is a fiber; the scheduler (scheduler.cpp) runs
// the runnable fibers one after another, each until it reaches __syncthreads, a warp shuffle or
// its end, in an order chosen per launch: forward, reverse or shuffled. A missing barrier then
// shows up as a different result in some order. Blocks run one at a time; __shared__ variables
// are statics, shared by the fibers of the running block; the scheduler fills them with NaNs
// before each block (CUDA leaves shared memory undefined at a block's start), so that a read
// before any write shows (their addresses come from the library's symbol table:
// tests/cuda_emulator.py). Only 1-D grids and blocks.
#pragma once

#include <string>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
};

// The running fiber's indices, set by the scheduler before it resumes a fiber.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

// Barrier of all threads of the block; every thread that has not exited must reach it (the
// scheduler reports a block whose threads exit while others wait at one).
void __syncthreads();

// The value of var in lane (lane + delta) of the calling thread's warp, within segments of
// `width` lanes (the caller's own value past a segment's end). Every lane of mask must call it;
// mask must hold the caller, and the source lane must be in mask.
float __shfl_down_sync(unsigned mask, float var, unsigned delta, int width = 32);
int __shfl_down_sync(unsigned mask, int var, unsigned delta, int width = 32);

// Fibers switch only at barriers and shuffles, so a read-modify-write is atomic here.
inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

namespace cuda_emulation {

enum Order { FORWARD = 0, REVERSE = 1, SHUFFLED = 2 };

// Runs kernel(arguments) as every thread of `grid` blocks of `block` threads. The threads of a
// block run in `order` between barriers (SHUFFLED: a new permutation each time, from `seed`), and
// the blocks in that order too. False, with *error set, when the kernel breaks the execution
// model (a barrier some threads never reach, a shuffle whose lanes do not all arrive).
// The __shared__ variables: filled with NaNs (all bytes 0xff) before each block.
void set_shared_memory(void** addresses, const size_t* sizes, size_t count);

bool run_grid(unsigned grid, unsigned block, void (*kernel)(void** arguments), void** arguments, Order order,
              unsigned seed, std::string* error);

}  // namespace cuda_emulation
