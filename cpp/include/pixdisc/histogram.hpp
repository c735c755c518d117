// Pixel frequency counting: the distinct pixel values of a data set with counts.
#pragma once

#include <cstdint>
#include <vector>

#include "pixdisc/bulk_allocator.hpp"
#include "pixdisc/nearest.hpp"

namespace pixdisc {

// Distinct pixel values in lexicographic order (channel 0 most significant)
// with how often each occurs. values is (n, channels) row-major.
struct Histogram {
  int channels = 1;
  // Bulk storage: millions of distinct colours are common (CIFAR-10 has ~4M).
  BulkVector<float> values;
  BulkVector<int64_t> counts;
  // True when every input value lay on the 1/255 grid (uint8 data or floats
  // that are exactly v/255): then values are exactly k/255 floats.
  bool on_u8_grid = false;
};

// counts must hold 256 entries; it is overwritten.
void histogram_gray_u8(const uint8_t* x, int64_t n, int64_t* counts);

Histogram histogram_u8(const uint8_t* x, PixelLayout layout);
// Float input in [0, 1]: exact counting on the 1/255 grid when every value is
// on it, a sort of the pixels otherwise. Throws on values outside [0, 1].
Histogram histogram_float(const float* x, PixelLayout layout);

}  // namespace pixdisc
