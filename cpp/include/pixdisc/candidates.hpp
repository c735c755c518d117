// Candidate sets C(x_i) of the certificate (SPEC §3) and the mixed-radix
// enumeration of S(x) = prod_i C(x_i). The per-pixel pieces are host-and-device.
#pragma once

#include <cstdint>
#include <vector>

#include "pixdisc/metric.hpp"
#include "pixdisc/nearest.hpp"

namespace pixdisc {

// Integer values are part of the binding ABI.
enum class CandidateRule : int {
  sound = 0,  // dist(x, c) <= dist(x, c*) + 2 delta  (any metric, any C)
  // One channel: exactly the codes nearest(x') over every float32 x' in [0,1]
  // with fabs(double(x') - double(x)) <= eps. In one dimension the nearest
  // code's value is non-decreasing in x', so these are the distinct code values
  // between those of nearest(lo32) and nearest(hi32), the float32 ends of the
  // ball (lowest index per value). No slack; see candidates.cpp for the proof
  // and the one fallback (l2 with code values closer than 2^-60 uses `sound`).
  exact = 1,
  // Any C: the sound set, less every code j that a single other code i beats
  // everywhere on the float32 box of the ball: min over the box of
  // q(p, c_j) - q(p, c_i) > kTightSlack, with q the kernel's own distance
  // (squared for l2). Per pair this minimum is computed exactly (l2: linear,
  // l1: separable, linf: one 1-D problem per channel); see candidates.cpp.
  // A code no single code beats may still be nearest nowhere on the box (for
  // l2 the Python layer then decides the Voronoi cell's LP).
  tight = 2,
};

// How far an image-level l_inf perturbation of size eps can move one pixel,
// measured in the pixel metric: eps (linf), C*eps (l1), sqrt(C)*eps (l2).
PIXDISC_HD double pixel_move(Metric metric, int channels, double eps) {
  if (metric == Metric::linf) return eps;
  if (metric == Metric::l1) return channels * eps;
  return sqrt(double(channels)) * eps;
}

// True distance in double (l2 not squared), for the candidate test.
template <int C>
PIXDISC_HD double true_distance(Metric metric, const float* x, long long stride, const float* c) {
  double acc = 0.0;
  for (int ch = 0; ch < C; ++ch) {
    const double d = fabs(double(x[ch * stride]) - double(c[ch]));
    if (metric == Metric::linf) acc = d > acc ? d : acc;
    else if (metric == Metric::l1) acc += d;
    else acc += d * d;
  }
  return metric == Metric::l2 ? sqrt(acc) : acc;
}

// Slack added to the sound rule's threshold (only that rule: the exact rule
// has none): it covers the float32 rounding an attacker's own discretization
// makes (relative 1e-7 on distances <= 2), so the candidate set is a superset
// of every reachable code.
constexpr double kCandidateSlack = 1e-6;

// Slack of the tight rule, in the kernel's distance units (squared for l2): a
// float32 distance of at most 4 ops per channel (C <= 4, values in [0, 1]) is
// within 9 * 2^-24 relative, i.e. 2.2e-6 absolute, of the real one, so when
// the kernel picks j over i, q(p, c_j) <= q(p, c_i) + 4.4e-6 in the reals.
constexpr double kTightSlack = 1e-5;

// Digit of `rank` at a position of a mixed radix number (least significant
// position first): stride is the product of the radices before it. Both
// enumerators (CPU and CUDA) decode ranks with this one function.
PIXDISC_HD int32_t mixed_radix_digit(uint64_t rank, uint64_t stride, int32_t radix) {
  return static_cast<int32_t>((rank / stride) % static_cast<uint64_t>(radix));
}

// Per-pixel candidate sets in CSR form: pixel p's codes are
// members[offsets[p] .. offsets[p+1]), its nearest code first, then the
// others in ascending index order.
struct CandidateSets {
  std::vector<int32_t> nearest;
  std::vector<int64_t> offsets;
  std::vector<int32_t> members;
};

// Builds candidate sets for the pixels of x viewed as (outer, C, inner).
// With counts_only, members stays empty and offsets holds the running counts.
CandidateSets candidate_sets(const NearestIndex& index, const float* x, PixelLayout layout, double eps,
                             CandidateRule rule, bool counts_only);

// Strides of the mixed radix given by the candidate counts; throws when the
// product (|S|) does not fit in 64 bits. Returns |S|.
uint64_t mixed_radix_strides(const int64_t* offsets, int n_ambiguous, uint64_t* strides);

// Fills out[b] (b < count) with base (an image of `image_size` floats) in
// which each ambiguous pixel j takes the code members[j][digit_j] of rank
// rank_start + b; pixel j's channels sit at positions[j] + c*channel_stride.
void enumerate_candidates(const float* base, int64_t image_size, const int64_t* positions, int64_t channel_stride,
                          const int64_t* offsets, const int32_t* members, int n_ambiguous, const float* codes,
                          int channels, uint64_t rank_start, int64_t count, float* out);

}  // namespace pixdisc
