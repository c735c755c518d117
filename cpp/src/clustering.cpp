// k-medoids (FasterPAM eager swaps) and weighted k-means on distinct values.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "pixdisc/codebook.hpp"
#include "pixdisc/metric.hpp"
#include "pixdisc/parallel.hpp"

namespace pixdisc {

namespace {

// splitmix64: tiny, fast and specified bit for bit, so a seed gives the same
// codebook on every platform (std distributions are implementation-defined).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  uint64_t below(uint64_t bound) { return static_cast<uint64_t>(uniform() * double(bound)); }
};

// k-medoids minimises true distances: Euclidean (not squared) for l2.
double distance(Metric metric, const float* a, const float* b, int channels) {
  const double d = fit_distance(metric, a, b, channels);
  return metric == Metric::l2 ? std::sqrt(d) : d;
}

void check_inputs(const int64_t* weights, int64_t n, int channels, int k) {
  if (channels < 1 || channels > kMaxChannels) throw std::invalid_argument("values must have 1 to 4 channels");
  if (k <= 0) throw std::invalid_argument("k must be positive, got " + std::to_string(k));
  if (n <= 0) throw std::invalid_argument("no pixel values to cluster");
  for (int64_t i = 0; i < n; ++i)
    if (weights[i] < 0) throw std::invalid_argument("weights must be non-negative");
}

// Canonical output order: codes sorted lexicographically.
void sort_codes(ClusterResult& result, int channels) {
  const int k = static_cast<int>(result.codes.size() / channels);
  std::vector<int> order(k);
  std::iota(order.begin(), order.end(), 0);
  const float* c = result.codes.data();
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return std::lexicographical_compare(c + a * channels, c + (a + 1) * channels, c + b * channels, c + (b + 1) * channels);
  });
  std::vector<float> codes;
  std::vector<int64_t> medoids;
  for (int j : order) {
    codes.insert(codes.end(), c + j * channels, c + (j + 1) * channels);
    if (!result.medoid_indices.empty()) medoids.push_back(result.medoid_indices[j]);
  }
  result.codes = std::move(codes);
  result.medoid_indices = std::move(medoids);
}

// Nearest (lowest index on ties) and second-nearest of k candidates, by dist(m).
struct TwoNearest {
  int arg = 0;
  double best = std::numeric_limits<double>::infinity();
  double second = std::numeric_limits<double>::infinity();
};
template <typename Dist>
TwoNearest two_nearest(int k, Dist&& dist) {
  TwoNearest t;
  for (int m = 0; m < k; ++m) {
    const double d = dist(m);
    if (d < t.best) {
      t.second = t.best;
      t.best = d;
      t.arg = m;
    } else if (d < t.second) {
      t.second = d;
    }
  }
  return t;
}

struct Assignment {
  std::vector<int> nearest;
  std::vector<double> d1, d2;
};

void assign_two_nearest(const float* values, int64_t n, int channels, Metric metric,
                        const std::vector<int64_t>& medoids, Assignment& a) {
  const int k = static_cast<int>(medoids.size());
  a.nearest.resize(n);
  a.d1.resize(n);
  a.d2.resize(n);
  parallel_for(n, 4096, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const TwoNearest t = two_nearest(k, [&](int m) {
        return distance(metric, values + i * channels, values + medoids[m] * channels, channels);
      });
      a.nearest[i] = t.arg;
      a.d1[i] = t.best;
      a.d2[i] = k > 1 ? t.second : t.best;
    }
  });
}

}  // namespace

ClusterResult kmedoids_codebook(const float* values, const int64_t* weights, int64_t n, int channels,
                                int k, Metric metric, uint64_t seed, int max_iter) {
  check_inputs(weights, n, channels, k);
  ClusterResult result;
  if (n <= k) {  // every distinct value is a medoid: cost 0
    result.codes.assign(values, values + n * channels);
    for (int64_t i = 0; i < n; ++i) result.medoid_indices.push_back(i);
    result.converged = true;
    return result;
  }
  // Seeded start: k distinct values by a partial Fisher-Yates shuffle.
  SplitMix64 rng{seed};
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  for (int m = 0; m < k; ++m) std::swap(perm[m], perm[m + rng.below(n - m)]);
  std::vector<int64_t> medoids(perm.begin(), perm.begin() + k);
  std::vector<char> is_medoid(n, 0);
  for (int64_t m : medoids) is_medoid[m] = 1;

  Assignment a;
  assign_two_nearest(values, n, channels, metric, medoids, a);
  std::vector<double> removal_loss(k);
  auto update_removal_loss = [&] {
    std::fill(removal_loss.begin(), removal_loss.end(), 0.0);
    for (int64_t i = 0; i < n; ++i) removal_loss[a.nearest[i]] += double(weights[i]) * (a.d2[i] - a.d1[i]);
  };
  update_removal_loss();
  auto total_cost = [&] {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += double(weights[i]) * a.d1[i];
    return s;
  };

  // Swap gains are summed over fixed blocks combined in block order, so the
  // chosen swaps (and the codes) do not depend on the thread count.
  constexpr int64_t kBlock = 2048;  // small enough to balance two workers on ~10k values
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> delta(static_cast<size_t>(blocks) * k);
  std::vector<double> gain(blocks);
  int64_t since_swap = 0;
  int64_t candidate = 0;
  const int64_t max_evaluations = int64_t(std::max(1, max_iter)) * n;
  int64_t evaluations = 0;
  while (since_swap < n && evaluations < max_evaluations) {
    const int64_t xc = candidate;
    candidate = (candidate + 1) % n;
    ++since_swap;
    if (is_medoid[xc]) continue;
    ++evaluations;
    // Change of cost if medoid m is replaced by xc, for every m at once.
    parallel_for(blocks, 1, [&](int64_t b0, int64_t b1, int) {
      for (int64_t b = b0; b < b1; ++b) {
        double* block_delta = delta.data() + b * k;
        std::fill(block_delta, block_delta + k, 0.0);
        double acc = 0.0;
        for (int64_t o = b * kBlock, end = std::min(n, (b + 1) * kBlock); o < end; ++o) {
          const double wo = double(weights[o]);
          const double doj = distance(metric, values + o * channels, values + xc * channels, channels);
          if (doj < a.d1[o]) {
            acc += wo * (doj - a.d1[o]);
            block_delta[a.nearest[o]] += wo * (a.d1[o] - a.d2[o]);
          } else if (doj < a.d2[o]) {
            block_delta[a.nearest[o]] += wo * (doj - a.d2[o]);
          }
        }
        gain[b] = acc;
      }
    });
    int best_m = 0;
    double best = std::numeric_limits<double>::infinity();
    for (int m = 0; m < k; ++m) {
      double d = removal_loss[m];
      for (int64_t b = 0; b < blocks; ++b) d += delta[b * k + m];
      if (d < best) {
        best = d;
        best_m = m;
      }
    }
    for (int64_t b = 0; b < blocks; ++b) best += gain[b];
    // Strict improvement beyond rounding noise, so the search terminates.
    if (best < -1e-12 * (1.0 + total_cost())) {
      is_medoid[medoids[best_m]] = 0;
      medoids[best_m] = xc;
      is_medoid[xc] = 1;
      assign_two_nearest(values, n, channels, metric, medoids, a);
      update_removal_loss();
      ++result.iterations;
      since_swap = 0;
    }
  }
  result.converged = since_swap >= n;
  result.cost = total_cost();
  for (int64_t m : medoids) {
    result.codes.insert(result.codes.end(), values + m * channels, values + (m + 1) * channels);
    result.medoid_indices.push_back(m);
  }
  sort_codes(result, channels);
  return result;
}

// Weighted k-means on distinct values. Two things keep it fast at CIFAR scale
// (millions of distinct colours, k in the hundreds) without changing what it
// computes:
// - every sum runs over fixed blocks combined in block order, so results do
//   not depend on the thread count;
// - Lloyd's assignment step skips a value whose centre provably stays its
//   strictly nearest one (Hamerly's bounds: an upper bound on the distance to
//   its centre, a lower bound on the distance to every other centre, both
//   moved by how far the centres moved). Only strict inequalities skip, so the
//   labels equal a full scan's, ties to the lowest centre index included.
ClusterResult kmeans_codebook(const float* values, const int64_t* weights, int64_t n, int channels,
                              int k, uint64_t seed, int max_iter, double tol) {
  check_inputs(weights, n, channels, k);
  SplitMix64 rng{seed};
  constexpr int64_t kBlock = 1 << 14;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  auto sq_dist = [&](const float* v, const double* c) {
    double s = 0.0;
    for (int ch = 0; ch < channels; ++ch) {
      const double d = double(v[ch]) - c[ch];
      s += d * d;
    }
    return s;
  };
  auto for_blocks = [&](auto&& fn) {  // fn(block, begin, end)
    parallel_for(blocks, 1, [&](int64_t b0, int64_t b1, int) {
      for (int64_t b = b0; b < b1; ++b) fn(b, b * kBlock, std::min(n, (b + 1) * kBlock));
    });
  };

  // Weighted k-means++: each new centre drawn with probability ~ w * D^2.
  // Block sums of the mass make each draw O(blocks + block) after the update.
  std::vector<double> centers;
  std::vector<double> mass(n), nearest_sq(n, std::numeric_limits<double>::infinity()), block_mass(blocks);
  for_blocks([&](int64_t b, int64_t begin, int64_t end) {
    double s = 0.0;
    for (int64_t i = begin; i < end; ++i) s += mass[i] = double(weights[i]);
    block_mass[b] = s;
  });
  auto sample = [&]() -> int64_t {
    double total = 0.0;
    for (double m : block_mass) total += m;
    if (!(total > 0.0)) return -1;
    const double u = rng.uniform() * total;
    double run = 0.0;
    int64_t last_positive = -1;
    for (int64_t b = 0; b < blocks; ++b) {
      if (block_mass[b] > 0.0) last_positive = b;
      if (run + block_mass[b] <= u) {
        run += block_mass[b];
        continue;
      }
      for (int64_t i = b * kBlock, end = std::min(n, (b + 1) * kBlock); i < end; ++i) {
        run += mass[i];
        if (run > u && mass[i] > 0.0) return i;
      }
    }
    // Rounding left u beyond the last sum: take the last value with mass.
    if (last_positive < 0) return -1;
    for (int64_t i = std::min(n, (last_positive + 1) * kBlock) - 1; i >= last_positive * kBlock; --i)
      if (mass[i] > 0.0) return i;
    return -1;
  };
  for (int m = 0; m < k; ++m) {
    const int64_t pick = sample();
    if (pick < 0) break;  // fewer distinct (weighted) values than k
    for (int ch = 0; ch < channels; ++ch) centers.push_back(values[pick * channels + ch]);
    const std::vector<double> c(centers.end() - channels, centers.end());
    for_blocks([&](int64_t b, int64_t begin, int64_t end) {
      double s = 0.0;
      for (int64_t i = begin; i < end; ++i) {
        nearest_sq[i] = std::min(nearest_sq[i], sq_dist(values + i * channels, c.data()));
        s += mass[i] = double(weights[i]) * nearest_sq[i];
      }
      block_mass[b] = s;
    });
  }
  const int kk = static_cast<int>(centers.size() / channels);
  std::vector<double>().swap(mass);
  std::vector<double>().swap(nearest_sq);

  // Bounds are kept with a little slack for the rounding of sqrt and of the
  // running sums, so a skip is never wrong.
  constexpr double kSlack = 1e-9;
  std::vector<int> label(n, -1);
  std::vector<double> upper(n, 0.0), lower(n, 0.0);
  std::vector<double> moved(kk, 0.0), half_gap(kk, 0.0);
  std::vector<double> block_sums(static_cast<size_t>(blocks) * kk * (channels + 1));
  std::vector<char> block_changed(blocks);
  ClusterResult result;
  for (int it = 0; it < max_iter; ++it) {
    // Half the distance from each centre to its nearest other centre: a value
    // closer than that to its centre cannot be nearer to any other.
    double max_moved = 0.0;
    for (int m = 0; m < kk; ++m) max_moved = std::max(max_moved, moved[m]);
    for (int m = 0; m < kk; ++m) {
      double best = std::numeric_limits<double>::infinity();
      for (int o = 0; o < kk; ++o) {
        if (o == m) continue;
        double s = 0.0;
        for (int ch = 0; ch < channels; ++ch) {
          const double d = centers[m * channels + ch] - centers[o * channels + ch];
          s += d * d;
        }
        best = std::min(best, s);
      }
      half_gap[m] = std::sqrt(best) / 2.0;
    }
    for_blocks([&](int64_t b, int64_t begin, int64_t end) {
      double* sums = block_sums.data() + b * kk * (channels + 1);
      std::fill(sums, sums + kk * (channels + 1), 0.0);
      char changed = 0;
      for (int64_t i = begin; i < end; ++i) {
        const float* v = values + i * channels;
        int a = label[i];
        if (a >= 0) {
          upper[i] += moved[a] + kSlack;
          lower[i] -= max_moved + kSlack;
        }
        const double bound = a >= 0 ? std::max(lower[i], half_gap[a]) : 0.0;
        if (a < 0 || upper[i] >= bound) {
          if (a >= 0) upper[i] = std::sqrt(sq_dist(v, centers.data() + a * channels)) + kSlack;
          if (a < 0 || upper[i] >= bound) {
            const TwoNearest t = two_nearest(kk, [&](int m) { return sq_dist(v, centers.data() + m * channels); });
            changed |= t.arg != a;
            a = label[i] = t.arg;
            upper[i] = std::sqrt(t.best) + kSlack;
            lower[i] = std::sqrt(t.second) - kSlack;
          }
        }
        const double wi = double(weights[i]);
        for (int ch = 0; ch < channels; ++ch) sums[a * (channels + 1) + ch] += wi * v[ch];
        sums[a * (channels + 1) + channels] += wi;
      }
      block_changed[b] = changed;
    });
    bool any_changed = false;
    for (char c : block_changed) any_changed |= c != 0;
    double shift = 0.0;
    for (int m = 0; m < kk; ++m) {
      double total_w = 0.0;
      std::vector<double> acc(channels, 0.0);
      for (int64_t b = 0; b < blocks; ++b) {  // block order: independent of the thread count
        const double* sums = block_sums.data() + (b * kk + m) * (channels + 1);
        for (int ch = 0; ch < channels; ++ch) acc[ch] += sums[ch];
        total_w += sums[channels];
      }
      moved[m] = 0.0;
      if (total_w <= 0.0) continue;  // empty cluster keeps its centre
      double step = 0.0;
      for (int ch = 0; ch < channels; ++ch) {
        const double c = std::clamp(acc[ch] / total_w, 0.0, 1.0);
        const double d = c - centers[m * channels + ch];
        step += d * d;
        shift = std::max(shift, std::abs(d));
        centers[m * channels + ch] = c;
      }
      moved[m] = std::sqrt(step);
    }
    result.iterations = it + 1;
    if (!any_changed || shift <= tol) {
      result.converged = true;
      break;
    }
  }
  std::vector<double> block_cost(blocks);
  for_blocks([&](int64_t b, int64_t begin, int64_t end) {
    double cost = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      double best = std::numeric_limits<double>::infinity();
      for (int m = 0; m < kk; ++m) best = std::min(best, sq_dist(values + i * channels, centers.data() + m * channels));
      cost += double(weights[i]) * best;
    }
    block_cost[b] = cost;
  });
  result.cost = std::accumulate(block_cost.begin(), block_cost.end(), 0.0);
  for (double c : centers) result.codes.push_back(static_cast<float>(c));
  sort_codes(result, channels);
  return result;
}

}  // namespace pixdisc
