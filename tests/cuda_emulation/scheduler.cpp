// The scheduler of the CUDA emulation (cuda_emulation.h): one fiber per thread of a block, run
// in a deterministic order between the points where CUDA threads wait for each other
// (__syncthreads, warp shuffles). A fiber starts on its own stack through ucontext and then
// switches with _setjmp/_longjmp, which save no signal mask (no system call per switch).
#include "cuda_emulation.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace cuda_emulation {
namespace {

constexpr unsigned WARP = 32;
constexpr size_t STACK_BYTES = 256 * 1024;

enum class State { RUNNABLE, AT_BARRIER, AT_SHUFFLE, DONE };

struct Fiber {
  ucontext_t start;  // where a fresh fiber begins (fiber_main on its stack)
  std::jmp_buf resume_at;
  bool started = false;
  char* stack = nullptr;
  unsigned index = 0;
  State state = State::DONE;
  // a shuffle in progress: the lanes it waits for, where its value comes from, and the values
  unsigned mask = 0;
  unsigned source = 0;
  std::uint64_t value = 0, result = 0;
};

std::vector<Fiber> fibers;
std::jmp_buf scheduler;
Fiber* current = nullptr;
void (*kernel)(void**) = nullptr;
void** kernel_arguments = nullptr;
std::string failure;  // set by a fiber or the scheduler: the launch stops
std::vector<std::pair<void*, size_t>> shared_memory;

// Back to the scheduler in `state`; returns when the scheduler resumes this fiber.
void suspend(State state) {
  Fiber* self = current;
  self->state = state;
  if (_setjmp(self->resume_at) == 0) _longjmp(scheduler, 1);
}

// A fiber runs the kernel once per block: the scheduler resumes it for the next block.
void fiber_main() {
  for (;;) {
    kernel(kernel_arguments);
    suspend(State::DONE);
  }
}

void resume(Fiber& f) {
  current = &f;
  threadIdx = {f.index, 0, 0};
  if (_setjmp(scheduler) == 0) {
    if (!f.started) {
      f.started = true;
      setcontext(&f.start);
    }
    _longjmp(f.resume_at, 1);
  }
}

// Stacks with a guard page below, so an overflow faults instead of writing over a neighbour.
char* new_stack() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* memory = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return nullptr;
  mprotect(memory, page, PROT_NONE);
  return static_cast<char*>(memory) + page;
}

bool make_fibers(unsigned count) {
  if (fibers.size() < count) fibers.resize(count);
  for (unsigned i = 0; i < count; ++i) {
    Fiber& f = fibers[i];
    if (!f.stack && !(f.stack = new_stack())) return false;
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = f.stack;
    f.start.uc_stack.ss_size = STACK_BYTES;
    f.start.uc_link = nullptr;  // fiber_main never returns
    makecontext(&f.start, fiber_main, 0);
    f.started = false;  // also a fiber a failed launch left halfway: it starts afresh
    f.index = i;
  }
  return true;
}

// xorshift32: the same permutations on every platform (std::shuffle's are the library's own)
struct Random {
  std::uint32_t state;
  std::uint32_t next() {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
  }
};

void arrange(std::vector<unsigned>& sequence, Order order, Random& random) {
  std::iota(sequence.begin(), sequence.end(), 0u);
  if (order == REVERSE) {
    std::reverse(sequence.begin(), sequence.end());
  } else if (order == SHUFFLED) {
    for (size_t i = sequence.size(); i > 1; --i) std::swap(sequence[i - 1], sequence[random.next() % i]);
  }
}

const char* describe(State s) {
  switch (s) {
    case State::RUNNABLE: return "running";
    case State::AT_BARRIER: return "at __syncthreads";
    case State::AT_SHUFFLE: return "at a shuffle";
    case State::DONE: return "exited";
  }
  return "?";
}

// Completes the shuffles whose lanes have all arrived; true if any did.
bool release_shuffles(unsigned block) {
  bool released = false;
  for (unsigned first = 0; first < block; first += WARP) {
    const unsigned lanes = std::min(WARP, block - first);
    int waiting = -1;
    for (unsigned l = 0; l < lanes; ++l)
      if (fibers[first + l].state == State::AT_SHUFFLE) waiting = static_cast<int>(l);
    if (waiting < 0) continue;
    const unsigned mask = fibers[first + waiting].mask;
    bool complete = true;
    for (unsigned l = 0; l < WARP; ++l) {
      if (!(mask >> l & 1u)) continue;
      if (l >= lanes) {
        failure = "a shuffle's mask names lane " + std::to_string(l) + ", past the block's last thread";
        return false;
      }
      const Fiber& f = fibers[first + l];
      if (f.state != State::AT_SHUFFLE) {
        complete = false;
      } else if (f.mask != mask) {
        failure = "lanes of warp " + std::to_string(first / WARP) + " wait at shuffles with different masks";
        return false;
      }
    }
    if (!complete) continue;
    for (unsigned l = 0; l < lanes; ++l) {
      Fiber& f = fibers[first + l];
      if (!(mask >> l & 1u)) continue;
      if (!(mask >> f.source & 1u)) {
        failure = "thread " + std::to_string(f.index) + " shuffles from lane " + std::to_string(f.source) +
                  ", which is not in the mask";
        return false;
      }
      f.result = fibers[first + f.source].value;
      f.state = State::RUNNABLE;
    }
    released = true;
  }
  return released;
}

bool run_block(unsigned block, Order order, Random& random) {
  for (const auto& [address, size] : shared_memory) std::memset(address, 0xff, size);
  for (unsigned i = 0; i < block; ++i) fibers[i].state = State::RUNNABLE;
  std::vector<unsigned> sequence(block);
  for (;;) {
    arrange(sequence, order, random);
    for (unsigned i : sequence) {
      if (fibers[i].state != State::RUNNABLE) continue;
      resume(fibers[i]);
      if (!failure.empty()) return false;
    }
    if (release_shuffles(block)) continue;
    if (!failure.empty()) return false;
    unsigned done = 0, at_barrier = 0;
    for (unsigned i = 0; i < block; ++i) {
      done += fibers[i].state == State::DONE;
      at_barrier += fibers[i].state == State::AT_BARRIER;
    }
    if (done == block) return true;
    if (at_barrier + done == block) {
      if (done > 0) {
        failure = std::to_string(at_barrier) + " threads wait at __syncthreads while " + std::to_string(done) +
                  " have exited (a barrier not every thread reaches)";
        return false;
      }
      for (unsigned i = 0; i < block; ++i) fibers[i].state = State::RUNNABLE;
      continue;
    }
    failure = "deadlock:";
    for (unsigned i = 0; i < block; ++i)
      if (fibers[i].state != State::DONE)
        failure += " thread " + std::to_string(i) + " " + describe(fibers[i].state) + ";";
    return false;
  }
}

template <typename T>
T shuffle(unsigned mask, T var, unsigned source) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t), "shuffles of up to 8 bytes");
  Fiber* self = current;
  const unsigned lane = self->index % WARP;
  if (!(mask >> lane & 1u)) {
    failure = "thread " + std::to_string(self->index) + " shuffles with a mask that leaves it out";
    suspend(State::AT_SHUFFLE);  // never resumed: the launch stops
  }
  self->mask = mask;
  self->source = source;
  std::memcpy(&self->value, &var, sizeof var);
  suspend(State::AT_SHUFFLE);
  T out;
  std::memcpy(&out, &self->result, sizeof out);
  return out;
}

template <typename T>
T shuffle_down(unsigned mask, T var, unsigned delta, int width) {
  const unsigned lane = threadIdx.x % WARP, w = static_cast<unsigned>(width);
  return shuffle(mask, var, lane % w + delta < w ? lane + delta : lane);
}

}  // namespace

void set_shared_memory(void** addresses, const size_t* sizes, size_t count) {
  shared_memory.clear();
  for (size_t i = 0; i < count; ++i) shared_memory.emplace_back(addresses[i], sizes[i]);
}

bool run_grid(unsigned grid, unsigned block, void (*body)(void**), void** arguments, Order order, unsigned seed,
              std::string* error) {
  failure.clear();
  if (block == 0 || block > 1024 || grid == 0) {
    *error = "grid " + std::to_string(grid) + " x block " + std::to_string(block) + " threads: not a launch";
    return false;
  }
  if (!make_fibers(block)) {
    *error = "no memory for the fibers' stacks";
    return false;
  }
  kernel = body;
  kernel_arguments = arguments;
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  Random random{seed * 2654435761u + 1u};
  std::vector<unsigned> blocks(grid);
  arrange(blocks, order, random);
  for (unsigned b : blocks) {
    blockIdx = {b, 0, 0};
    if (!run_block(block, order, random)) {
      *error = "block " + std::to_string(b) + ": " + failure;
      return false;
    }
  }
  return true;
}

}  // namespace cuda_emulation

void __syncthreads() {
  asm volatile("" ::: "memory");
  cuda_emulation::suspend(cuda_emulation::State::AT_BARRIER);
  asm volatile("" ::: "memory");
}

float __shfl_down_sync(unsigned mask, float var, unsigned delta, int width) {
  return cuda_emulation::shuffle_down(mask, var, delta, width);
}

int __shfl_down_sync(unsigned mask, int var, unsigned delta, int width) {
  return cuda_emulation::shuffle_down(mask, var, delta, width);
}
