// CPU nearest-code kernels: grid construction and the per-pixel loops.
#include "pixdisc/nearest.hpp"

#include <cstring>
#include <sstream>

namespace pixdisc {

namespace {

// Slack that keeps every float-arithmetic minimiser inside a cell's list:
// cells are widened a little and the keep-test gets an absolute margin, both
// far above float32 rounding of distances of values in [0, 1].
constexpr double kCellSlack = 1e-6;
constexpr double kKeepSlack = 1e-5;

struct BadValue {
  bool found = false;
  double value = 0.0;
};

[[noreturn]] void throw_bad_value(double v) {
  std::ostringstream msg;
  msg << "pixel values must lie in [0, 1] (float input) but found " << v;
  throw std::invalid_argument(msg.str());
}

void check_workers(const std::vector<BadValue>& bad) {
  for (const auto& b : bad)
    if (b.found) throw_bad_value(b.value);
}

// A gray uint8 discretization is a step function of the byte value. With at
// most kMaxSteps steps it is computed as base + sum_j (v > t_j ? d_j : 0) in
// byte arithmetic (wrapping, so the telescoping sum is exact): branch-free
// code the compiler vectorises with plain SSE2, running at memory bandwidth,
// where a 256-entry table lookup is a scalar gather per byte.
class StepMap {
 public:
  static constexpr int kMaxSteps = 15;

  static StepMap from_lut(const uint8_t* lut) {
    StepMap m;
    m.base_ = lut[0];
    for (int v = 1; v < 256; ++v) {
      if (lut[v] == lut[v - 1]) continue;
      if (m.steps_ == kMaxSteps) {
        m.steps_ = -1;  // too many steps: use the table
        return m;
      }
      m.thresholds_[m.steps_] = static_cast<uint8_t>(v - 1);
      m.deltas_[m.steps_] = static_cast<uint8_t>(lut[v] - lut[v - 1]);
      ++m.steps_;
    }
    return m;
  }

  // False when the map has too many steps (the caller then uses the table).
  bool apply(const uint8_t* x, uint8_t* out, int64_t n) const {
    switch (steps_) {
      case 0: std::memset(out, base_, static_cast<size_t>(n)); return true;
      case 1: run<1>(x, out, n); return true;
      case 2: run<2>(x, out, n); return true;
      case 3: run<3>(x, out, n); return true;
      case 4: run<4>(x, out, n); return true;
      case 5: run<5>(x, out, n); return true;
      case 6: run<6>(x, out, n); return true;
      case 7: run<7>(x, out, n); return true;
      case 8: run<8>(x, out, n); return true;
      default: break;
    }
    if (steps_ < 0) return false;
    run<kMaxSteps>(x, out, n);  // unused trailing steps have t=255: v > 255 never holds
    return true;
  }

 private:
  int steps_ = 0;
  uint8_t base_ = 0;
  uint8_t thresholds_[kMaxSteps + 1] = {};
  uint8_t deltas_[kMaxSteps + 1] = {};

  StepMap() {
    for (auto& t : thresholds_) t = 255;
  }

  template <int R>
  void run(const uint8_t* __restrict x, uint8_t* __restrict out, int64_t n) const {
    uint8_t t[R], d[R];
    for (int j = 0; j < R; ++j) {
      t[j] = thresholds_[j];
      d[j] = deltas_[j];
    }
    const uint8_t base = base_;
    for (int64_t p = 0; p < n; ++p) {
      const uint8_t v = x[p];
      uint8_t o = base;
      for (int j = 0; j < R; ++j) o = static_cast<uint8_t>(o + (v > t[j] ? d[j] : 0));
      out[p] = o;
    }
  }
};

}  // namespace

void NearestIndex::build_grid() {
  // Tiny codebooks: one cell holding every code is as fast as any grid.
  cells_per_axis_ = k_ <= 4 ? 1 : detail::grid_cells_per_axis(channels_, k_);
  int64_t cells = 1;
  for (int c = 0; c < channels_; ++c) cells *= cells_per_axis_;
  const int workers = planned_workers(cells, 256);
  std::vector<std::vector<int32_t>> worker_lists(workers);
  std::vector<int32_t> counts(cells);
  parallel_for(cells, 256, [&](int64_t begin, int64_t end, int w) {
    std::vector<double> lo(channels_), hi(channels_), min_d(k_), max_d(k_);
    auto& out = worker_lists[w];
    for (int64_t cell = begin; cell < end; ++cell) {
      int64_t rest = cell;
      for (int c = 0; c < channels_; ++c) {
        const int64_t g = rest % cells_per_axis_;
        rest /= cells_per_axis_;
        lo[c] = double(g) / cells_per_axis_ - kCellSlack;
        hi[c] = double(g + 1) / cells_per_axis_ + kCellSlack;
      }
      double min_of_max = std::numeric_limits<double>::infinity();
      for (int j = 0; j < k_; ++j) {
        double near = 0.0, far = 0.0;
        for (int c = 0; c < channels_; ++c) {
          const double v = codes_[j * channels_ + c];
          const double gap = std::max({0.0, lo[c] - v, v - hi[c]});
          const double span = std::max(std::abs(v - lo[c]), std::abs(v - hi[c]));
          near = detail::combine_metric(metric_, near, gap);
          far = detail::combine_metric(metric_, far, span);
        }
        min_d[j] = near;
        max_d[j] = far;
        min_of_max = std::min(min_of_max, far);
      }
      int32_t n = 0;
      for (int j = 0; j < k_; ++j) {
        if (min_d[j] <= min_of_max + kKeepSlack) {
          out.push_back(j);
          ++n;
        }
      }
      counts[cell] = n;
    }
  });
  offsets_.assign(cells + 1, 0);
  for (int64_t cell = 0; cell < cells; ++cell) offsets_[cell + 1] = offsets_[cell] + counts[cell];
  lists_.clear();
  lists_.reserve(offsets_[cells]);
  for (auto& part : worker_lists) lists_.insert(lists_.end(), part.begin(), part.end());
}

int NearestIndex::dispatch_nearest(const float* x, int64_t stride) const {
  return dispatch_metric_channels(metric_, channels_, [&](auto m, auto c) {
    return nearest_t<decltype(m)::value, decltype(c)::value>(x, stride);
  });
}

template <Metric M, int C>
void NearestIndex::run_float_t(const float* x, PixelLayout layout, int32_t* index, float* out) const {
  const int64_t inner = layout.inner;
  const int workers = planned_workers(layout.pixels(), 1 << 15);
  std::vector<BadValue> bad(workers);
  parallel_for(layout.pixels(), 1 << 15, [&](int64_t begin, int64_t end, int w) {
    int64_t o = begin / inner, i = begin % inner;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t base = o * C * inner + i;
      const float* pixel = x + base;
      bool ok = true;
      for (int c = 0; c < C; ++c) ok = ok && in_unit_range(pixel[c * inner]);
      int j = 0;
      if (ok) {
        j = nearest_t<M, C>(pixel, inner);
      } else if (!bad[w].found) {
        bad[w].found = true;
        for (int c = 0; c < C; ++c)
          if (!in_unit_range(pixel[c * inner])) { bad[w].value = pixel[c * inner]; break; }
      }
      if (index) index[p] = j;
      if (out)
        for (int c = 0; c < C; ++c) out[base + c * inner] = codes_[j * C + c];
      if (++i == inner) { i = 0; ++o; }
    }
  });
  check_workers(bad);
}

template <Metric M, int C>
void NearestIndex::run_u8_t(const uint8_t* x, PixelLayout layout, int32_t* index, uint8_t* out) const {
  const int64_t inner = layout.inner;
  if (C == 1) {
    // Gray uint8: 256 possible inputs, so a lookup table is exact and the
    // loop is a pure gather limited by memory bandwidth.
    int32_t lut_index[256];
    uint8_t lut_value[256];
    for (int v = 0; v < 256; ++v) {
      const float f = u8_to_unit(static_cast<uint8_t>(v));
      lut_index[v] = nearest_t<M, 1>(&f, 1);
      lut_value[v] = codes_u8_[lut_index[v]];
    }
    const StepMap steps = StepMap::from_lut(lut_value);
    parallel_for(layout.pixels(), 1 << 16, [&](int64_t begin, int64_t end, int) {
      if (out) {
        if (!steps.apply(x + begin, out + begin, end - begin))
          for (int64_t p = begin; p < end; ++p) out[p] = lut_value[x[p]];
      }
      if (index)
        for (int64_t p = begin; p < end; ++p) index[p] = lut_index[x[p]];
    });
    return;
  }
  parallel_for(layout.pixels(), 1 << 15, [&](int64_t begin, int64_t end, int) {
    int64_t o = begin / inner, i = begin % inner;
    // Neighbouring pixels often share a colour: remember the last answer.
    uint32_t last_key = 0xffffffffu;
    int last_j = 0;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t base = o * C * inner + i;
      uint32_t key = 0;
      float pixel[C];
      for (int c = 0; c < C; ++c) {
        const uint8_t v = x[base + c * inner];
        key = (key << 8) | v;
        pixel[c] = u8_to_unit(v);
      }
      if (key != last_key) {
        last_j = nearest_t<M, C>(pixel, 1);
        last_key = key;
      }
      if (index) index[p] = last_j;
      if (out)
        for (int c = 0; c < C; ++c) out[base + c * inner] = codes_u8_[last_j * C + c];
      if (++i == inner) { i = 0; ++o; }
    }
  });
}

void NearestIndex::run_float(const float* x, PixelLayout layout, int32_t* index, float* out) const {
  if (layout.channels != channels_)
    throw std::invalid_argument("input has " + std::to_string(layout.channels) +
                                " channels but the codebook has " + std::to_string(channels_));
  dispatch_metric_channels(metric_, channels_, [&](auto m, auto c) {
    run_float_t<decltype(m)::value, decltype(c)::value>(x, layout, index, out);
  });
}

void NearestIndex::run_u8(const uint8_t* x, PixelLayout layout, int32_t* index, uint8_t* out) const {
  if (layout.channels != channels_)
    throw std::invalid_argument("input has " + std::to_string(layout.channels) +
                                " channels but the codebook has " + std::to_string(channels_));
  dispatch_metric_channels(metric_, channels_, [&](auto m, auto c) {
    run_u8_t<decltype(m)::value, decltype(c)::value>(x, layout, index, out);
  });
}

}  // namespace pixdisc
