// Pixel distances shared by every kernel, CPU and CUDA alike.
//
// For l2 the kernels work with the *squared* distance: it orders codes the same
// way, needs no sqrt, and is what "dist <= r" compares against r*r. Every
// operation is written out in a fixed order so the CPU, the GPU (built with
// --fmad=false) and a NumPy reference produce bit-identical floats.
#pragma once

#include <math.h>

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

}  // namespace pixdisc
