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
      double best = std::numeric_limits<double>::infinity(), second = best;
      int arg = 0;
      for (int m = 0; m < k; ++m) {
        const double d = distance(metric, values + i * channels, values + medoids[m] * channels, channels);
        if (d < best) {
          second = best;
          best = d;
          arg = m;
        } else if (d < second) {
          second = d;
        }
      }
      a.nearest[i] = arg;
      a.d1[i] = best;
      a.d2[i] = k > 1 ? second : best;
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

  const int workers = planned_workers(n, 8192);
  std::vector<std::vector<double>> delta(workers, std::vector<double>(k));
  std::vector<double> gain(workers);
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
    parallel_for(n, 8192, [&](int64_t begin, int64_t end, int w) {
      std::fill(delta[w].begin(), delta[w].end(), 0.0);
      double acc = 0.0;
      for (int64_t o = begin; o < end; ++o) {
        const double wo = double(weights[o]);
        const double doj = distance(metric, values + o * channels, values + xc * channels, channels);
        if (doj < a.d1[o]) {
          acc += wo * (doj - a.d1[o]);
          delta[w][a.nearest[o]] += wo * (a.d1[o] - a.d2[o]);
        } else if (doj < a.d2[o]) {
          delta[w][a.nearest[o]] += wo * (doj - a.d2[o]);
        }
      }
      gain[w] = acc;
    });
    const int used = planned_workers(n, 8192);
    int best_m = 0;
    double best = std::numeric_limits<double>::infinity();
    for (int m = 0; m < k; ++m) {
      double d = removal_loss[m];
      for (int w = 0; w < used; ++w) d += delta[w][m];
      if (d < best) {
        best = d;
        best_m = m;
      }
    }
    for (int w = 0; w < used; ++w) best += gain[w];
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

ClusterResult kmeans_codebook(const float* values, const int64_t* weights, int64_t n, int channels,
                              int k, uint64_t seed, int max_iter, double tol) {
  check_inputs(weights, n, channels, k);
  SplitMix64 rng{seed};
  auto sq_dist = [&](const float* v, const double* c) {
    double s = 0.0;
    for (int ch = 0; ch < channels; ++ch) {
      const double d = double(v[ch]) - c[ch];
      s += d * d;
    }
    return s;
  };
  auto sample = [&](const std::vector<double>& mass) -> int64_t {
    const double total = std::accumulate(mass.begin(), mass.end(), 0.0);
    if (!(total > 0.0)) return -1;
    const double u = rng.uniform() * total;
    double run = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      run += mass[i];
      if (run > u && mass[i] > 0.0) return i;
    }
    for (int64_t i = n - 1; i >= 0; --i)
      if (mass[i] > 0.0) return i;
    return -1;
  };

  // Weighted k-means++: each new centre drawn with probability ~ w * D^2.
  std::vector<double> centers;
  std::vector<double> mass(n), nearest_sq(n, std::numeric_limits<double>::infinity());
  for (int64_t i = 0; i < n; ++i) mass[i] = double(weights[i]);
  for (int m = 0; m < k; ++m) {
    const int64_t pick = sample(mass);
    if (pick < 0) break;  // fewer distinct (weighted) values than k
    for (int ch = 0; ch < channels; ++ch) centers.push_back(values[pick * channels + ch]);
    const double* c = centers.data() + m * channels;
    for (int64_t i = 0; i < n; ++i) {
      nearest_sq[i] = std::min(nearest_sq[i], sq_dist(values + i * channels, c));
      mass[i] = double(weights[i]) * nearest_sq[i];
    }
  }
  const int kk = static_cast<int>(centers.size() / channels);
  ClusterResult result;
  std::vector<int> label(n, -1);
  const int workers = planned_workers(n, 4096);
  std::vector<std::vector<double>> sums(workers, std::vector<double>(kk * (channels + 1)));
  std::vector<char> changed(workers);
  for (int it = 0; it < max_iter; ++it) {
    parallel_for(n, 4096, [&](int64_t begin, int64_t end, int w) {
      auto& s = sums[w];
      std::fill(s.begin(), s.end(), 0.0);
      changed[w] = 0;
      for (int64_t i = begin; i < end; ++i) {
        const float* v = values + i * channels;
        int arg = 0;
        double best = sq_dist(v, centers.data());
        for (int m = 1; m < kk; ++m) {
          const double d = sq_dist(v, centers.data() + m * channels);
          if (d < best) {
            best = d;
            arg = m;
          }
        }
        changed[w] |= label[i] != arg;
        label[i] = arg;
        const double wi = double(weights[i]);
        for (int ch = 0; ch < channels; ++ch) s[arg * (channels + 1) + ch] += wi * v[ch];
        s[arg * (channels + 1) + channels] += wi;
      }
    });
    const int used = planned_workers(n, 4096);
    bool any_changed = false;
    double shift = 0.0;
    for (int m = 0; m < kk; ++m) {
      double total_w = 0.0;
      std::vector<double> acc(channels, 0.0);
      for (int w = 0; w < used; ++w) {
        for (int ch = 0; ch < channels; ++ch) acc[ch] += sums[w][m * (channels + 1) + ch];
        total_w += sums[w][m * (channels + 1) + channels];
      }
      if (total_w <= 0.0) continue;  // empty cluster keeps its centre
      for (int ch = 0; ch < channels; ++ch) {
        const double c = std::clamp(acc[ch] / total_w, 0.0, 1.0);
        shift = std::max(shift, std::abs(c - centers[m * channels + ch]));
        centers[m * channels + ch] = c;
      }
    }
    for (int w = 0; w < used; ++w) any_changed |= changed[w] != 0;
    result.iterations = it + 1;
    if (!any_changed || shift <= tol) {
      result.converged = true;
      break;
    }
  }
  double cost = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double best = std::numeric_limits<double>::infinity();
    for (int m = 0; m < kk; ++m) best = std::min(best, sq_dist(values + i * channels, centers.data() + m * channels));
    cost += double(weights[i]) * best;
  }
  result.cost = cost;
  for (double c : centers) result.codes.push_back(static_cast<float>(c));
  sort_codes(result, channels);
  return result;
}

}  // namespace pixdisc
