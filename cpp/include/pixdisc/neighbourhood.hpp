// Neighbourhood sizes |N_inf(p, eps)| of 8-bit colours by summed-area tables (the paper's Fig. 6).
//
// The training pixels are counted into a dense table over every 8-bit value
// (256 bins for gray, 256^3 for RGB, key (r << 16) | (g << 8) | b); inclusive
// prefix sums along each axis turn it into a summed-area table, after which
// the number of pixels in any axis-aligned box - the l_inf ball of radius e
// levels around a colour, clipped to [0, 255] - is 2 (gray) or 8 (RGB) table
// reads by inclusion-exclusion. The box query is host-and-device, so the CPU
// tests cover the logic the CUDA kernel runs.
#pragma once

#include <cstdint>

#include "pixdisc/common.hpp"

namespace pixdisc {

constexpr int kLevels = 256;                           // values per 8-bit channel
constexpr int64_t kColourBins = int64_t(1) << 24;      // entries of the RGB table
constexpr int64_t kColourPlane = int64_t(1) << 16;     // entries of one r-slab (g, b)

PIXDISC_HD int clamp_level(int v) { return v < 0 ? 0 : (v > kLevels - 1 ? kLevels - 1 : v); }

// Entry of an inclusive RGB summed-area table; an index of -1 is the empty
// prefix before level 0 and reads as 0.
PIXDISC_HD int64_t sat_at(const int64_t* sat, int r, int g, int b) {
  if (r < 0 || g < 0 || b < 0) return 0;
  return sat[(int64_t(r) << 16) | (int64_t(g) << 8) | int64_t(b)];
}

// Total count in the box [r0, r1] x [g0, g1] x [b0, b1] (inclusive bounds
// inside 0..255, lo <= hi) by inclusion-exclusion over its 8 corners.
PIXDISC_HD int64_t sat_box_sum(const int64_t* sat, int r0, int r1, int g0, int g1, int b0, int b1) {
  const int rl = r0 - 1, gl = g0 - 1, bl = b0 - 1;
  return sat_at(sat, r1, g1, b1) - sat_at(sat, rl, g1, b1) - sat_at(sat, r1, gl, b1) - sat_at(sat, r1, g1, bl) +
         sat_at(sat, rl, gl, b1) + sat_at(sat, rl, g1, bl) + sat_at(sat, r1, gl, bl) - sat_at(sat, rl, gl, bl);
}

// Counted pixels within `radius` levels of (r, g, b) in every channel, i.e.
// within radius/255 in l_inf; the cube is clipped to the valid levels.
PIXDISC_HD int64_t neighbourhood_count_rgb(const int64_t* sat, int r, int g, int b, int radius) {
  return sat_box_sum(sat, clamp_level(r - radius), clamp_level(r + radius), clamp_level(g - radius),
                     clamp_level(g + radius), clamp_level(b - radius), clamp_level(b + radius));
}

// Gray: prefix is the inclusive prefix sum of the 256-bin histogram.
PIXDISC_HD int64_t neighbourhood_count_gray(const int64_t* prefix, int v, int radius) {
  const int lo = clamp_level(v - radius), hi = clamp_level(v + radius);
  return prefix[hi] - (lo > 0 ? prefix[lo - 1] : 0);
}

// Key of a colour query: channel 0 most significant, as in the histograms.
PIXDISC_HD int64_t neighbourhood_count_key(const int64_t* sat, int channels, int64_t key, int radius) {
  if (channels == 1) return neighbourhood_count_gray(sat, static_cast<int>(key & 0xff), radius);
  return neighbourhood_count_rgb(sat, static_cast<int>((key >> 16) & 0xff), static_cast<int>((key >> 8) & 0xff),
                                 static_cast<int>(key & 0xff), radius);
}

// In-place inclusive prefix sums along every axis of a dense count table:
// 256 entries (channels = 1) or 256^3 (channels = 3, r slowest). Multithreaded.
void summed_area_table(int64_t* table, int channels);

// Number of the weighted points (uint8, (n_points, channels), weights null
// meaning 1 each) within `radius` levels in l_inf of each query colour
// (uint8, (n_queries, channels)), written to out. channels is 1 or 3; radius
// must be >= 0 (anything from 255 up covers every level). Builds the count
// table and its summed-area table (128 MiB for RGB), then answers each query
// in O(1). Distinct colours weighted by their counts (a Histogram) make a
// far cheaper scatter than the raw pixels they summarise.
void neighbourhood_counts(const uint8_t* points, const int64_t* weights, int64_t n_points, int channels,
                          const uint8_t* queries, int64_t n_queries, int radius, int64_t* out);

}  // namespace pixdisc
