// Host stand-in for CUDA's cuda_fp16.h (test-only emulation): the storage type and the two
// conversions mixed_dw.cu uses, through the compiler's IEEE binary16 type (round to nearest even).
#pragma once

#include <cstring>

struct __half {
  unsigned short bits;
};

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, sizeof f);
  return static_cast<float>(f);
}

inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);
  __half h;
  std::memcpy(&h.bits, &f, sizeof f);
  return h;
}
