// Nearest-code assignment and discretization on the CPU.
//
// Pixels arrive as a contiguous array viewed as (outer, C, inner): channel-last
// data is (npix, C, 1) and NCHW is (N, C, H*W), so no layout needs a copy.
// A uniform grid over [0,1]^C stores, per cell, every code that can be nearest
// to some point of the cell; each pixel then scans a short list instead of all
// k codes, with the exact same distance arithmetic as the brute-force rule, so
// results (ties to the lowest index included) match it bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "pixdisc/metric.hpp"
#include "pixdisc/parallel.hpp"

namespace pixdisc {

struct PixelLayout {
  int64_t outer = 0;
  int channels = 1;
  int64_t inner = 1;
  int64_t pixels() const { return outer * inner; }
};

namespace detail {

inline double combine_metric(Metric m, double acc, double d) {
  if (m == Metric::linf) return std::max(acc, d);
  if (m == Metric::l1) return acc + d;
  return acc + d * d;
}

// Grid resolution per channel count: enough cells that candidate lists stay
// short for k in the hundreds, few enough that building the grid is cheap.
inline int grid_cells_per_axis(int channels, int k) {
  if (channels == 1) return 4096;
  if (channels == 2) return 256;
  if (channels == 3) return std::clamp(static_cast<int>(std::ceil(2.5 * std::cbrt(double(k)))), 4, 32);
  return 12;
}

}  // namespace detail

// Codes plus the acceleration grid; built once per codebook and reused.
class NearestIndex {
 public:
  NearestIndex(std::vector<float> codes, int channels, Metric metric)
      : codes_(std::move(codes)), channels_(channels), metric_(metric) {
    if (channels < 1 || channels > kMaxChannels)
      throw std::invalid_argument("codes must have 1 to " + std::to_string(kMaxChannels) +
                                  " channels, got " + std::to_string(channels));
    if (codes_.empty() || codes_.size() % channels != 0)
      throw std::invalid_argument("codes must be a non-empty (k, C) array");
    k_ = static_cast<int>(codes_.size() / channels);
    for (float v : codes_)
      if (!in_unit_range(v)) throw std::invalid_argument("codes must lie in [0, 1] (found " + std::to_string(v) + ")");
    for (int j = 0; j < k_; ++j) {
      for (int c = 0; c < channels_; ++c) {
        const float v = codes_[j * channels_ + c];
        codes_u8_.push_back(static_cast<uint8_t>(std::nearbyint(v * 255.0f)));
      }
    }
    build_grid();
  }

  int k() const { return k_; }
  int channels() const { return channels_; }
  Metric metric() const { return metric_; }
  const std::vector<float>& codes() const { return codes_; }
  int grid_cells_per_axis() const { return cells_per_axis_; }
  double mean_candidates() const {
    return double(lists_.size()) / double(offsets_.size() - 1);
  }

  // index[o*inner + i] = nearest code of pixel (o, :, i). Throws on values
  // outside [0, 1] (NaN included) after the pass, naming the first one seen.
  void assign(const float* x, PixelLayout layout, int32_t* index) const {
    run_float(x, layout, index, nullptr);
  }
  // out has x's layout; index may be null.
  void transform(const float* x, PixelLayout layout, float* out, int32_t* index) const {
    run_float(x, layout, index, out);
  }
  void assign_u8(const uint8_t* x, PixelLayout layout, int32_t* index) const {
    run_u8(x, layout, index, nullptr);
  }
  void transform_u8(const uint8_t* x, PixelLayout layout, uint8_t* out, int32_t* index) const {
    run_u8(x, layout, index, out);
  }

  // Single pixel (contiguous channels), used by the other CPU kernels.
  int nearest(const float* pixel) const { return dispatch_nearest(pixel, 1); }

 private:
  std::vector<float> codes_;
  std::vector<uint8_t> codes_u8_;
  int channels_;
  int k_ = 0;
  Metric metric_;
  int cells_per_axis_ = 1;
  std::vector<int32_t> offsets_;  // cell -> start in lists_, size cells + 1
  std::vector<int32_t> lists_;    // ascending code indices per cell

  void build_grid();
  int cell_of(const float* x, int64_t stride) const {
    int cell = 0;
    int scale = 1;
    for (int c = 0; c < channels_; ++c) {
      int g = static_cast<int>(x[c * stride] * cells_per_axis_);
      g = g >= cells_per_axis_ ? cells_per_axis_ - 1 : g;
      cell += g * scale;
      scale *= cells_per_axis_;
    }
    return cell;
  }

  template <Metric M, int C>
  int nearest_t(const float* x, int64_t stride) const {
    const int cell = cell_of(x, stride);
    const int32_t begin = offsets_[cell];
    return nearest_in_list<M, C>(x, stride, codes_.data(), lists_.data() + begin, offsets_[cell + 1] - begin);
  }

  int dispatch_nearest(const float* x, int64_t stride) const;
  void run_float(const float* x, PixelLayout layout, int32_t* index, float* out) const;
  void run_u8(const uint8_t* x, PixelLayout layout, int32_t* index, uint8_t* out) const;
  template <Metric M, int C>
  void run_float_t(const float* x, PixelLayout layout, int32_t* index, float* out) const;
  template <Metric M, int C>
  void run_u8_t(const uint8_t* x, PixelLayout layout, int32_t* index, uint8_t* out) const;
};

}  // namespace pixdisc
