// Shared definitions for host and device code: the HD marker, metrics, errors.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PIXDISC_HD __host__ __device__ __forceinline__
#else
#define PIXDISC_HD inline
#endif

namespace pixdisc {

// The integer values are part of the binding ABI (Python passes them as ints).
enum class Metric : int { linf = 0, l1 = 1, l2 = 2 };

// Largest channel count the kernels are instantiated for.
constexpr int kMaxChannels = 4;

}  // namespace pixdisc
