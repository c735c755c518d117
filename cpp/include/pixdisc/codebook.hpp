// Codebook construction on a weighted set of distinct pixel values: the
// paper's greedy density selection (Algorithm 1), PAM k-medoids (Algorithm 2)
// and weighted k-means.
#pragma once

#include <cstdint>
#include <vector>

#include "pixdisc/common.hpp"

namespace pixdisc {

// Integer values are part of the binding ABI.
enum class Kernel : int { identity = 0, box = 1, gaussian = 2 };

struct DensityResult {
  std::vector<float> codes;            // (n_codes, C)
  std::vector<int64_t> code_indices;   // index of each code among the values
  std::vector<double> densities;       // density of each code when it was chosen
  std::vector<int64_t> covered;        // pixels removed by each code (within r)
  bool stopped_early = false;          // no pixel remained before k codes
};

// values (n, C) must be distinct and sorted lexicographically (a Histogram);
// weights are pixel counts. Density ties go to the smallest value.
// bandwidth is h for box, sigma for gaussian (truncated at 4 sigma); unused
// for identity. Distances are evaluated in double; l2 compares squares.
DensityResult density_codebook(const float* values, const int64_t* weights, int64_t n, int channels,
                               int k, double r, Metric metric, Kernel kernel, double bandwidth);

struct ClusterResult {
  std::vector<float> codes;        // (k, C)
  std::vector<int64_t> medoid_indices;  // k-medoids only
  double cost = 0.0;               // weighted sum of distances (k-medoids) or squared distances (k-means)
  int iterations = 0;
  bool converged = false;
};

// PAM by eager swaps (FasterPAM) from k seeded distinct random values;
// distances in `metric` (l2 is Euclidean here, not squared).
ClusterResult kmedoids_codebook(const float* values, const int64_t* weights, int64_t n, int channels,
                                int k, Metric metric, uint64_t seed, int max_iter);

// Weighted Lloyd iterations from a weighted k-means++ start.
ClusterResult kmeans_codebook(const float* values, const int64_t* weights, int64_t n, int channels,
                              int k, uint64_t seed, int max_iter, double tol);

}  // namespace pixdisc
