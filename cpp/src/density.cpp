// Algorithm 1: greedy density selection of codes on the histogram of values.
//
// A grid of cells at least as wide as the largest radius in play (r, or the
// kernel support) finds every value within that radius of a point by visiting
// a few neighbouring cells. The next code comes from one radix-sorted order
// (identity kernel: densities never change) or a max segment tree over
// (density, -index) (box, gaussian), so each round costs only what it removes.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "pixdisc/codebook.hpp"
#include "pixdisc/metric.hpp"
#include "pixdisc/parallel.hpp"

namespace pixdisc {

namespace {

constexpr double kFitTolerance = 1e-6;

// The values that are still "remaining", bucketed by grid cell in CSR form:
// cell c owns slots [begin[c], begin[c] + active[c]) of `members`, and a
// removal swaps the value with the cell's last active one, so scans only
// ever touch remaining values.
class ValueGrid {
 public:
  ValueGrid(const float* values, int64_t n, int channels, double reach)
      : values_(values), channels_(channels) {
    // Cells of about half the reach: a query box then spans ~5 cells per axis
    // and wastes little volume; capped so the cell arrays stay small.
    const int max_cells[] = {0, 1 << 16, 1 << 10, 128, 24};
    const double per_axis = reach > 0 ? std::floor(2.0 / reach) : double(max_cells[channels]);
    cells_per_axis_ = static_cast<int>(std::clamp(per_axis, 1.0, double(max_cells[channels])));
    int64_t cells = 1;
    for (int c = 0; c < channels; ++c) cells *= cells_per_axis_;
    begin_.assign(cells + 1, 0);
    active_.assign(cells, 0);
    std::vector<int32_t> cell(n);
    for (int64_t i = 0; i < n; ++i) {
      cell[i] = static_cast<int32_t>(cell_of(values + i * channels));
      ++active_[cell[i]];
    }
    for (int64_t c = 0; c < cells; ++c) begin_[c + 1] = begin_[c] + active_[c];
    members_.resize(n);
    slot_.resize(n);
    std::vector<int64_t> fill(begin_.begin(), begin_.end() - 1);
    for (int64_t i = 0; i < n; ++i) {  // ascending i: each cell's slots start sorted
      slot_[i] = fill[cell[i]]++;
      members_[slot_[i]] = static_cast<int32_t>(i);
    }
  }

  void remove(int32_t i) {
    const int64_t c = cell_of(values_ + int64_t(i) * channels_);
    const int64_t last_slot = begin_[c] + --active_[c];
    const int32_t last = members_[last_slot];
    members_[slot_[i]] = last;
    slot_[last] = slot_[i];
    members_[last_slot] = i;
    slot_[i] = last_slot;
  }

  // Calls fn(j) for every remaining value j in the cells that can hold values
  // within `radius` of point in any metric (their l_inf box). A value's cell
  // is floor(v * G) computed exactly in double; the 1e-9 margin covers the
  // rounding of point +- radius. fn must not remove values during the scan.
  template <typename Fn>
  void for_each_near(const float* point, double radius, Fn&& fn) const {
    int lo[kMaxChannels], hi[kMaxChannels], cur[kMaxChannels];
    for (int c = 0; c < channels_; ++c) {
      const double from = std::floor((double(point[c]) - radius) * cells_per_axis_ - 1e-9);
      const double to = std::floor((double(point[c]) + radius) * cells_per_axis_ + 1e-9);
      lo[c] = static_cast<int>(std::clamp(from, 0.0, double(cells_per_axis_ - 1)));
      hi[c] = static_cast<int>(std::clamp(to, 0.0, double(cells_per_axis_ - 1)));
      cur[c] = lo[c];
    }
    while (true) {
      int64_t cell = 0, scale = 1;
      for (int c = 0; c < channels_; ++c) {
        cell += cur[c] * scale;
        scale *= cells_per_axis_;
      }
      const int64_t stop = begin_[cell] + active_[cell];
      for (int64_t s = begin_[cell]; s < stop; ++s) fn(members_[s]);
      // Odometer step over the cell box.
      int c = 0;
      while (c < channels_ && cur[c] == hi[c]) {
        cur[c] = lo[c];
        ++c;
      }
      if (c == channels_) return;
      ++cur[c];
    }
  }

 private:
  const float* values_;
  int channels_;
  int cells_per_axis_ = 1;
  std::vector<int64_t> begin_;
  std::vector<int64_t> active_;
  std::vector<int32_t> members_;
  std::vector<int64_t> slot_;  // position of each value inside members_

  int64_t cell_of(const float* v) const {
    int64_t cell = 0, scale = 1;
    for (int c = 0; c < channels_; ++c) {
      const int g = std::clamp(static_cast<int>(std::floor(double(v[c]) * cells_per_axis_)), 0, cells_per_axis_ - 1);
      cell += g * scale;
      scale *= cells_per_axis_;
    }
    return cell;
  }
};

// Max segment tree over (density, lowest index); removed leaves hold -1.
class ArgmaxTree {
 public:
  explicit ArgmaxTree(const std::vector<double>& density) : density_(density) {
    const int64_t n = static_cast<int64_t>(density.size());
    size_ = 1;
    while (size_ < n) size_ <<= 1;
    node_.assign(2 * size_, -1);
    for (int64_t i = 0; i < n; ++i) node_[size_ + i] = i;
    for (int64_t v = size_ - 1; v >= 1; --v) node_[v] = better(node_[2 * v], node_[2 * v + 1]);
  }
  int64_t best() const { return node_[1]; }
  void erase(int64_t i) { set_leaf(i, -1); }
  void refresh(int64_t i) { set_leaf(i, i); }

 private:
  const std::vector<double>& density_;
  int64_t size_ = 1;
  std::vector<int64_t> node_;

  int64_t better(int64_t a, int64_t b) const {
    if (a < 0) return b;
    if (b < 0) return a;
    if (density_[b] > density_[a]) return b;
    return a;  // equal density: a has the lower index (left subtree)
  }
  void set_leaf(int64_t i, int64_t value) {
    int64_t v = size_ + i;
    node_[v] = value;
    for (v >>= 1; v >= 1; v >>= 1) node_[v] = better(node_[2 * v], node_[2 * v + 1]);
  }
};

void check_sorted_distinct(const float* values, int64_t n, int channels) {
  for (int64_t i = 1; i < n; ++i) {
    const float* a = values + (i - 1) * channels;
    const float* b = values + i * channels;
    if (!std::lexicographical_compare(a, a + channels, b, b + channels))
      throw std::invalid_argument("values must be distinct and sorted lexicographically (use pixel_histogram)");
  }
}

// With the identity kernel densities never change, so the codes are the
// values in one fixed order (count desc, index asc) with removed ones
// skipped. Counts are integers: a stable LSD radix sort of the indices by
// (max count - count) gives that order in a few linear passes (11-bit
// digits, as many as the largest count needs).
class CountOrder {
 public:
  CountOrder(const int64_t* weights, int64_t n) : order_(n) {
    for (int64_t i = 0; i < n; ++i) order_[i] = static_cast<int32_t>(i);
    uint64_t max = 0;
    for (int64_t i = 0; i < n; ++i) max = std::max(max, static_cast<uint64_t>(weights[i]));
    constexpr int kBits = 11;
    constexpr uint64_t kMask = (uint64_t(1) << kBits) - 1;
    std::vector<int32_t> sorted(n);
    std::vector<int64_t> start(size_t(1) << kBits);
    for (int shift = 0; shift < 64 && (max >> shift) != 0; shift += kBits) {
      auto digit = [&](int32_t i) { return ((max - static_cast<uint64_t>(weights[i])) >> shift) & kMask; };
      std::fill(start.begin(), start.end(), 0);
      for (int32_t i : order_) ++start[digit(i)];
      int64_t pos = 0;
      for (auto& s : start) {
        const int64_t c = s;
        s = pos;
        pos += c;
      }
      for (int32_t i : order_) sorted[start[digit(i)]++] = i;  // stable: equal counts keep index order
      order_.swap(sorted);
    }
  }
  // Next value in the order for which removed[] is false, or -1.
  int64_t next(const std::vector<char>& removed) {
    while (pos_ < static_cast<int64_t>(order_.size())) {
      const int32_t i = order_[pos_++];
      if (!removed[i]) return i;
    }
    return -1;
  }

 private:
  std::vector<int32_t> order_;
  int64_t pos_ = 0;
};

}  // namespace

DensityResult density_codebook(const float* values, const int64_t* weights, int64_t n, int channels,
                               int k, double r, Metric metric, Kernel kernel, double bandwidth) {
  if (channels < 1 || channels > kMaxChannels) throw std::invalid_argument("values must have 1 to 4 channels");
  if (k <= 0) throw std::invalid_argument("k must be positive, got " + std::to_string(k));
  if (!(r >= 0.0) || std::isinf(r)) throw std::invalid_argument("r must be a finite number >= 0");
  if (kernel != Kernel::identity && !(bandwidth > 0.0 && std::isfinite(bandwidth)))
    throw std::invalid_argument("the kernel bandwidth must be a finite number > 0");
  if (n > std::numeric_limits<int32_t>::max()) throw std::invalid_argument("too many distinct values");
  check_sorted_distinct(values, n, channels);
  for (int64_t i = 0; i < n; ++i)
    if (weights[i] < 0) throw std::invalid_argument("weights must be non-negative");

  // Kernel support in the metric's units (squared for l2, like the distances).
  const double support = kernel == Kernel::identity ? 0.0 : kernel == Kernel::box ? bandwidth : 4.0 * bandwidth;
  auto as_metric = [&](double d) { return metric == Metric::l2 ? d * d : d; };
  // Pixel values are float32 images of reals such as k/255: a distance within
  // kFitTolerance of r counts as <= r, so 8-bit data exactly r*255 levels away
  // is removed, as in exact arithmetic.
  const double r_cmp = as_metric(r + kFitTolerance), support_cmp = as_metric(support + kFitTolerance);
  auto kernel_weight = [&](double d) {  // d in metric units (squared for l2)
    if (kernel == Kernel::box) return d <= support_cmp ? 1.0 : 0.0;
    if (d > support_cmp) return 0.0;
    const double d2 = metric == Metric::l2 ? d : d * d;
    return std::exp(-d2 / (2.0 * bandwidth * bandwidth));
  };

  ValueGrid grid(values, n, channels, std::max(r, support));
  std::vector<double> density(n);
  if (kernel == Kernel::identity) {
    for (int64_t i = 0; i < n; ++i) density[i] = double(weights[i]);
  } else {
    parallel_for(n, 1024, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) {
        const float* p = values + i * channels;
        double s = 0.0;
        grid.for_each_near(p, support, [&](int32_t j) {
          s += kernel_weight(fit_distance(metric, p, values + int64_t(j) * channels, channels)) * double(weights[j]);
        });
        density[i] = s;
      }
    });
  }
  const bool static_density = kernel == Kernel::identity;
  std::unique_ptr<ArgmaxTree> tree;
  std::unique_ptr<CountOrder> order;
  if (static_density) order = std::make_unique<CountOrder>(weights, n);
  else tree = std::make_unique<ArgmaxTree>(density);
  std::vector<char> removed(n, 0);
  std::vector<int32_t> round_removed;

  DensityResult result;
  for (int t = 0; t < k; ++t) {
    const int64_t best = static_density ? order->next(removed) : tree->best();
    if (best < 0) {
      result.stopped_early = true;
      break;
    }
    const float* code = values + best * channels;
    result.codes.insert(result.codes.end(), code, code + channels);
    result.code_indices.push_back(best);
    result.densities.push_back(density[best]);
    round_removed.clear();
    grid.for_each_near(code, r, [&](int32_t j) {
      if (fit_distance(metric, code, values + int64_t(j) * channels, channels) <= r_cmp) round_removed.push_back(j);
    });
    int64_t covered = 0;
    for (int32_t j : round_removed) {
      removed[j] = 1;
      covered += weights[j];
      grid.remove(j);
      if (tree) tree->erase(j);
    }
    result.covered.push_back(covered);
    if (static_density) continue;
    // Removed pixels no longer count towards their neighbours' densities.
    for (int32_t q : round_removed) {
      const float* qv = values + int64_t(q) * channels;
      grid.for_each_near(qv, support, [&](int32_t p) {
        const double w = kernel_weight(fit_distance(metric, qv, values + int64_t(p) * channels, channels));
        if (w > 0.0) {
          density[p] -= w * double(weights[q]);
          tree->refresh(p);
        }
      });
    }
  }
  return result;
}

}  // namespace pixdisc
