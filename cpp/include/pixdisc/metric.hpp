// Pixel distances shared by every kernel, CPU and CUDA alike.
//
// For l2 the kernels work with the *squared* distance: it orders codes the same
// way, needs no sqrt, and is what "dist <= r" compares against r*r. Every
// operation is written out in a fixed order so the CPU, the GPU (built with
// --fmad=false) and a NumPy reference produce bit-identical floats.
#pragma once

#include <math.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "pixdisc/common.hpp"

namespace pixdisc {

// |a - b| without a branch: round-to-nearest is symmetric, so fabs(a - b)
// is bit-identical to whichever of a - b and b - a is non-negative.
PIXDISC_HD float abs_diff(float a, float b) { return fabsf(a - b); }
PIXDISC_HD double abs_diff(double a, double b) { return fabs(a - b); }

// Distance between two C-channel pixels, a read with stride `a_stride`.
template <Metric M, int C, typename T>
PIXDISC_HD T pixel_distance(const T* a, long long a_stride, const T* b) {
  T acc = T(0);
  for (int c = 0; c < C; ++c) {
    const T d = abs_diff(a[c * a_stride], b[c]);
    if (M == Metric::linf) {
      acc = d > acc ? d : acc;  // compiles to maxss
    } else if (M == Metric::l1) {
      acc = acc + d;
    } else {
      acc = acc + d * d;
    }
  }
  return acc;
}

// Index of the nearest code by brute force; ties go to the lowest index
// because only a strictly smaller distance replaces the current best.
// `codes` is (k, C) row-major.
template <Metric M, int C>
PIXDISC_HD int nearest_code(const float* x, long long x_stride, const float* codes, int k) {
  int best = 0;
  float best_d = pixel_distance<M, C>(x, x_stride, codes);
  for (int j = 1; j < k; ++j) {
    const float d = pixel_distance<M, C>(x, x_stride, codes + j * C);
    const bool closer = d < best_d;  // strict: ties keep the lower index
    best = closer ? j : best;
    best_d = closer ? d : best_d;
  }
  return best;
}

// Same over an ascending list of code indices (the CPU grid's candidates).
template <Metric M, int C>
PIXDISC_HD int nearest_in_list(const float* x, long long x_stride, const float* codes,
                               const int32_t* list, int n) {
  int best = list[0];
  float best_d = pixel_distance<M, C>(x, x_stride, codes + best * C);
  for (int i = 1; i < n; ++i) {
    const int j = list[i];
    const float d = pixel_distance<M, C>(x, x_stride, codes + j * C);
    const bool closer = d < best_d;  // strict: ties keep the lower index
    best = closer ? j : best;
    best_d = closer ? d : best_d;
  }
  return best;
}

// Distance between two contiguous pixels in double, as codebook fitting uses
// it: squared for l2 (so "dist <= r" compares d^2 <= r^2).
PIXDISC_HD double fit_distance(Metric metric, const float* a, const float* b, int channels) {
  double acc = 0.0;
  for (int c = 0; c < channels; ++c) {
    const double d = fabs(double(a[c]) - double(b[c]));
    if (metric == Metric::linf) acc = d > acc ? d : acc;
    else if (metric == Metric::l1) acc += d;
    else acc += d * d;
  }
  return acc;
}

// A pixel value is valid when it lies in [0, 1]; NaN fails both comparisons.
PIXDISC_HD bool in_unit_range(float v) { return v >= 0.0f && v <= 1.0f; }

// uint8 pixels mean v/255; division (not multiplication by 1/255) gives the
// correctly rounded float32, the same value NumPy's `x / np.float32(255)` gives.
PIXDISC_HD float u8_to_unit(uint8_t v) { return static_cast<float>(v) / 255.0f; }

// Nearest 8-bit level of v in [0, 1]; +0.5 and truncation instead of
// nearbyint (a libm call without SSE4.1). They differ only at exact halves,
// which are never on the grid.
PIXDISC_HD uint32_t u8_level(float v) { return static_cast<uint32_t>(v * 255.0f + 0.5f); }

// The one on-grid test (CPU histogram, CUDA histogram): true when v is
// exactly the float u8_to_unit(level) of some 8-bit level, which is then
// written to *level. NaN and values outside [0, 1] are off the grid.
PIXDISC_HD bool on_u8_grid(float v, uint32_t* level) {
  if (!in_unit_range(v)) return false;
  const uint32_t q = u8_level(v);
  *level = q;
  return u8_to_unit(static_cast<uint8_t>(q)) == v;
}

template <Metric M>
using MetricTag = std::integral_constant<Metric, M>;
template <int C>
using ChannelTag = std::integral_constant<int, C>;

// The one metric x channel dispatch (host only): calls
// f(MetricTag<M>{}, ChannelTag<C>{}) for the runtime pair, so the caller's
// generic lambda instantiates its template as decltype(m)::value and
// decltype(c)::value. Used by the CPU index and the CUDA launchers alike.
template <typename F>
auto dispatch_metric_channels(Metric metric, int channels, F&& f) {
  switch (channels * 3 + static_cast<int>(metric)) {
    case 1 * 3 + 0: return f(MetricTag<Metric::linf>{}, ChannelTag<1>{});
    case 1 * 3 + 1: return f(MetricTag<Metric::l1>{}, ChannelTag<1>{});
    case 1 * 3 + 2: return f(MetricTag<Metric::l2>{}, ChannelTag<1>{});
    case 2 * 3 + 0: return f(MetricTag<Metric::linf>{}, ChannelTag<2>{});
    case 2 * 3 + 1: return f(MetricTag<Metric::l1>{}, ChannelTag<2>{});
    case 2 * 3 + 2: return f(MetricTag<Metric::l2>{}, ChannelTag<2>{});
    case 3 * 3 + 0: return f(MetricTag<Metric::linf>{}, ChannelTag<3>{});
    case 3 * 3 + 1: return f(MetricTag<Metric::l1>{}, ChannelTag<3>{});
    case 3 * 3 + 2: return f(MetricTag<Metric::l2>{}, ChannelTag<3>{});
    case 4 * 3 + 0: return f(MetricTag<Metric::linf>{}, ChannelTag<4>{});
    case 4 * 3 + 1: return f(MetricTag<Metric::l1>{}, ChannelTag<4>{});
    case 4 * 3 + 2: return f(MetricTag<Metric::l2>{}, ChannelTag<4>{});
    default: break;
  }
  throw std::invalid_argument("unsupported metric or channel count (metric " + std::to_string(int(metric)) +
                              ", " + std::to_string(channels) + " channels; 1 to 4 are supported)");
}

}  // namespace pixdisc
