// CPU candidate sets and S(x) enumeration for the certificate.
#include "pixdisc/candidates.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace pixdisc {

namespace {

// One channel, exact rule. Sorted distinct code values v_0 < ... < v_m have
// real Voronoi intervals [(v_{r-1}+v_r)/2, (v_r+v_{r+1})/2]; code r is
// reachable iff its interval meets [x-eps, x+eps] ∩ [0,1]. An attacker's
// float32 nearest() can only stray 1.2e-7 outside these intervals (rounding
// of |y-c|), so widening them by kCandidateSlack keeps the set sound; among
// duplicate values only the lowest index is ever chosen.
struct SortedCodes {
  std::vector<int32_t> order;  // distinct-valued codes (lowest index each), by value
  std::vector<double> lower;   // widened Voronoi interval of order[r]
  std::vector<double> upper;
  explicit SortedCodes(const std::vector<float>& codes) {
    const int k = static_cast<int>(codes.size());
    std::vector<int32_t> all(k);
    std::iota(all.begin(), all.end(), 0);
    std::stable_sort(all.begin(), all.end(), [&](int32_t a, int32_t b) { return codes[a] < codes[b]; });
    for (int32_t j : all)
      if (order.empty() || codes[order.back()] != codes[j]) order.push_back(j);
    const size_t m = order.size();
    lower.resize(m);
    upper.resize(m);
    for (size_t r = 0; r < m; ++r) {
      const double v = codes[order[r]];
      lower[r] = (r == 0 ? -1.0 : 0.5 * (double(codes[order[r - 1]]) + v)) - kCandidateSlack;
      upper[r] = (r + 1 == m ? 2.0 : 0.5 * (v + double(codes[order[r + 1]]))) + kCandidateSlack;
    }
  }
  // Ranks [first, last] of the intervals meeting [lo, hi]; both arrays ascend.
  void reachable(double lo, double hi, int32_t& first, int32_t& last) const {
    first = static_cast<int32_t>(std::lower_bound(upper.begin(), upper.end(), lo) - upper.begin());
    last = static_cast<int32_t>(std::upper_bound(lower.begin(), lower.end(), hi) - lower.begin()) - 1;
  }
};

template <int C>
void sound_sets(const NearestIndex& index, const float* x, PixelLayout layout, double eps, bool counts_only,
                CandidateSets& out) {
  const std::vector<float>& codes = index.codes();
  const int k = index.k();
  const double threshold_extra = 2.0 * pixel_move(index.metric(), C, eps) + kCandidateSlack;
  const int64_t n = layout.pixels(), inner = layout.inner;
  std::vector<int32_t> counts(n);
  out.nearest.resize(n);
  parallel_for(n, 4096, [&](int64_t begin, int64_t end, int) {
    int64_t o = begin / inner, i = begin % inner;
    for (int64_t p = begin; p < end; ++p) {
      const float* pixel = x + o * C * inner + i;
      float contiguous[C];
      for (int c = 0; c < C; ++c) {
        contiguous[c] = pixel[c * inner];
        if (!in_unit_range(contiguous[c])) {
          std::ostringstream msg;
          msg << "pixel values must lie in [0, 1] (float input) but found " << contiguous[c];
          throw std::invalid_argument(msg.str());
        }
      }
      const int star = index.nearest(contiguous);
      out.nearest[p] = star;
      const double limit = true_distance<C>(index.metric(), contiguous, 1, codes.data() + star * C) + threshold_extra;
      // Same test as the fill pass below, so counts and members always agree.
      int32_t count = 1;
      for (int j = 0; j < k; ++j)
        count += j != star && true_distance<C>(index.metric(), contiguous, 1, codes.data() + j * C) <= limit;
      counts[p] = count;
      if (++i == inner) { i = 0; ++o; }
    }
  });
  out.offsets.assign(n + 1, 0);
  for (int64_t p = 0; p < n; ++p) out.offsets[p + 1] = out.offsets[p] + counts[p];
  if (counts_only) return;
  out.members.resize(out.offsets[n]);
  parallel_for(n, 4096, [&](int64_t begin, int64_t end, int) {
    int64_t o = begin / inner, i = begin % inner;
    for (int64_t p = begin; p < end; ++p) {
      float contiguous[C];
      for (int c = 0; c < C; ++c) contiguous[c] = x[o * C * inner + i + c * inner];
      const int star = out.nearest[p];
      const double limit = true_distance<C>(index.metric(), contiguous, 1, codes.data() + star * C) + threshold_extra;
      int64_t w = out.offsets[p];
      out.members[w++] = star;
      for (int j = 0; j < k; ++j)
        if (j != star && true_distance<C>(index.metric(), contiguous, 1, codes.data() + j * C) <= limit)
          out.members[w++] = j;
      if (++i == inner) { i = 0; ++o; }
    }
  });
}

void exact_sets(const NearestIndex& index, const float* x, PixelLayout layout, double eps, bool counts_only,
                CandidateSets& out) {
  const SortedCodes sorted(index.codes());
  const int64_t n = layout.pixels();
  std::vector<int32_t> first(n), last(n);
  out.nearest.resize(n);
  parallel_for(n, 4096, [&](int64_t begin, int64_t end, int) {
    for (int64_t p = begin; p < end; ++p) {
      const float v = x[p];
      if (!in_unit_range(v)) {
        std::ostringstream msg;
        msg << "pixel values must lie in [0, 1] (float input) but found " << v;
        throw std::invalid_argument(msg.str());
      }
      out.nearest[p] = index.nearest(&v);
      sorted.reachable(std::max(0.0, double(v) - eps), std::min(1.0, double(v) + eps), first[p], last[p]);
    }
  });
  out.offsets.assign(n + 1, 0);
  for (int64_t p = 0; p < n; ++p) {
    // The nearest code's interval always contains the pixel, so a set is never empty.
    if (last[p] < first[p]) throw std::logic_error("internal error: empty exact candidate set");
    out.offsets[p + 1] = out.offsets[p] + (last[p] - first[p] + 1);
  }
  if (counts_only) return;
  out.members.resize(out.offsets[n]);
  parallel_for(n, 4096, [&](int64_t begin, int64_t end, int) {
    for (int64_t p = begin; p < end; ++p) {
      int64_t w = out.offsets[p];
      const int star = out.nearest[p];
      out.members[w++] = star;
      std::vector<int32_t> others;
      for (int32_t r = first[p]; r <= last[p]; ++r)
        if (sorted.order[r] != star) others.push_back(sorted.order[r]);
      std::sort(others.begin(), others.end());
      for (int32_t j : others) out.members[w++] = j;
    }
  });
}

}  // namespace

CandidateSets candidate_sets(const NearestIndex& index, const float* x, PixelLayout layout, double eps,
                             CandidateRule rule, bool counts_only) {
  if (!(eps >= 0.0) || !std::isfinite(eps)) throw std::invalid_argument("eps must be a finite number >= 0");
  if (layout.channels != index.channels())
    throw std::invalid_argument("input has " + std::to_string(layout.channels) + " channels but the codebook has " +
                                std::to_string(index.channels()));
  CandidateSets out;
  if (rule == CandidateRule::exact) {
    if (index.channels() != 1) throw std::invalid_argument("the exact candidate rule needs one-channel codes");
    exact_sets(index, x, layout, eps, counts_only, out);
    return out;
  }
  switch (index.channels()) {
    case 1: sound_sets<1>(index, x, layout, eps, counts_only, out); break;
    case 2: sound_sets<2>(index, x, layout, eps, counts_only, out); break;
    case 3: sound_sets<3>(index, x, layout, eps, counts_only, out); break;
    case 4: sound_sets<4>(index, x, layout, eps, counts_only, out); break;
    default: throw std::invalid_argument("unsupported channel count");
  }
  return out;
}

uint64_t mixed_radix_strides(const int64_t* offsets, int n_ambiguous, uint64_t* strides) {
  uint64_t product = 1;
  for (int j = 0; j < n_ambiguous; ++j) {
    const int64_t radix = offsets[j + 1] - offsets[j];
    if (radix < 1) throw std::invalid_argument("every candidate set needs at least one code");
    strides[j] = product;
    if (product > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(radix))
      throw std::invalid_argument("|S(x)| exceeds 2^64: enumerate a smaller product");
    product *= static_cast<uint64_t>(radix);
  }
  return product;
}

void enumerate_candidates(const float* base, int64_t image_size, const int64_t* positions, int64_t channel_stride,
                          const int64_t* offsets, const int32_t* members, int n_ambiguous, const float* codes,
                          int channels, uint64_t rank_start, int64_t count, float* out) {
  std::vector<uint64_t> strides(n_ambiguous);
  const uint64_t total = mixed_radix_strides(offsets, n_ambiguous, strides.data());
  if (count > 0 && (rank_start >= total || uint64_t(count) > total - rank_start))
    throw std::invalid_argument("rank range exceeds the size of S(x)");
  parallel_for(count, 64, [&](int64_t begin, int64_t end, int) {
    for (int64_t b = begin; b < end; ++b) {
      float* image = out + b * image_size;
      std::copy(base, base + image_size, image);
      const uint64_t rank = rank_start + uint64_t(b);
      for (int j = 0; j < n_ambiguous; ++j) {
        const int32_t radix = static_cast<int32_t>(offsets[j + 1] - offsets[j]);
        const int32_t code = members[offsets[j] + mixed_radix_digit(rank, strides[j], radix)];
        for (int c = 0; c < channels; ++c) image[positions[j] + c * channel_stride] = codes[code * channels + c];
      }
    }
  });
}

}  // namespace pixdisc
