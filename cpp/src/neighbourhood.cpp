// CPU neighbourhood sizes: dense count table, summed-area table, O(1) box queries.
#include "pixdisc/neighbourhood.hpp"

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "pixdisc/bulk_allocator.hpp"
#include "pixdisc/parallel.hpp"

namespace pixdisc {

namespace {

using Table = ZeroedArray<int64_t>;

// Prefix sums along b then g inside one r-slab (512 KiB, so the second pass
// reads what the first left in cache): two of the three passes fused.
void slab_prefix_sums(int64_t* slab) {
  for (int g = 0; g < kLevels; ++g) {
    int64_t* row = slab + g * kLevels;
    for (int b = 1; b < kLevels; ++b) row[b] += row[b - 1];
  }
  for (int g = 1; g < kLevels; ++g) {
    int64_t* row = slab + g * kLevels;
    const int64_t* above = row - kLevels;
    for (int b = 0; b < kLevels; ++b) row[b] += above[b];  // contiguous: vectorises
  }
}

void check_radius(int radius) {
  if (radius < 0) throw std::invalid_argument("the neighbourhood radius must be >= 0 levels, got " + std::to_string(radius));
}

}  // namespace

void summed_area_table(int64_t* table, int channels) {
  if (channels == 1) {
    for (int v = 1; v < kLevels; ++v) table[v] += table[v - 1];
    return;
  }
  if (channels != 3) throw std::invalid_argument("summed-area tables take 1 or 3 channels, got " + std::to_string(channels));
  parallel_for(kLevels, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t r = begin; r < end; ++r) slab_prefix_sums(table + r * kColourPlane);
  });
  // Third pass along r: each worker owns a contiguous range of (g, b)
  // columns and walks down the slabs, so every row it adds is contiguous.
  parallel_for(kColourPlane, 4096, [&](int64_t begin, int64_t end, int) {
    for (int r = 1; r < kLevels; ++r) {
      int64_t* slab = table + int64_t(r) * kColourPlane;
      const int64_t* previous = slab - kColourPlane;
      for (int64_t j = begin; j < end; ++j) slab[j] += previous[j];
    }
  });
}

void neighbourhood_counts(const uint8_t* points, const int64_t* weights, int64_t n_points, int channels,
                          const uint8_t* queries, int64_t n_queries, int radius, int64_t* out) {
  if (channels != 1 && channels != 3)
    throw std::invalid_argument("neighbourhood sizes take 1 (gray) or 3 (RGB) channels, got " + std::to_string(channels));
  check_radius(radius);
  if (n_points < 0 || n_queries < 0) throw std::invalid_argument("negative point or query count");
  if (weights)
    for (int64_t p = 0; p < n_points; ++p)
      if (weights[p] < 0) throw std::invalid_argument("point weights (pixel counts) must be >= 0");
  const int64_t bins = channels == 1 ? kLevels : kColourBins;
  Table table = zeroed_array<int64_t>(static_cast<size_t>(bins), "count table");
  int64_t* t = table.get();
  if (channels == 1) {
    for (int64_t p = 0; p < n_points; ++p) t[points[p]] += weights ? weights[p] : 1;
  } else {
    // Points may repeat, so workers must not share a bin: each owns a range
    // of r-slabs and scans every point, adding only those in its slabs.
    // Bounded worker count keeps the repeated scans cheap next to the writes.
    parallel_for(
        kLevels, 1,
        [&](int64_t r_begin, int64_t r_end, int) {
          for (int64_t p = 0; p < n_points; ++p) {
            const uint8_t* c = points + 3 * p;
            if (c[0] < r_begin || c[0] >= r_end) continue;
            t[(int64_t(c[0]) << 16) | (int64_t(c[1]) << 8) | c[2]] += weights ? weights[p] : 1;
          }
        },
        8);
  }
  summed_area_table(t, channels);
  parallel_for(n_queries, 1 << 14, [&](int64_t begin, int64_t end, int) {
    for (int64_t q = begin; q < end; ++q) {
      const uint8_t* c = queries + int64_t(channels) * q;
      out[q] = channels == 1 ? neighbourhood_count_gray(t, c[0], radius)
                             : neighbourhood_count_rgb(t, c[0], c[1], c[2], radius);
    }
  });
}

}  // namespace pixdisc
