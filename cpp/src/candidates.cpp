// CPU candidate sets and S(x) enumeration for the certificate.
#include "pixdisc/candidates.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace pixdisc {

namespace {

// One channel, exact rule: C(x) is exactly the set of codes nearest(x') over
// every float32 x' in [0, 1] with fabs(double(x') - double(x)) <= eps, where
// nearest() is the kernel itself (float32 |x'-c|, squared for l2, ties to the
// lowest index). Why a closed form exists:
//  - The float32s of the ball form one contiguous run [lo32, hi32] (the double
//    distance is monotone in x'); ball_ends() finds its two ends.
//  - In one channel the nearest code's VALUE is a non-decreasing function of
//    x': float rounding of |x'-c| is monotone and, for codes a < b, strictly
//    orders fl|x'-a| and fl|x'-b| on each side, so "b beats a" (distance, then
//    index) holds on an up-set of x'. Each code value's preimage is therefore
//    an interval of floats, and it contains the value itself (distance 0).
//  - Hence the reachable code values are exactly the distinct code values in
//    [value(nearest(lo32)), value(nearest(hi32))]; among duplicated values only
//    the lowest index is ever chosen. No slack: codes that only a widened real
//    Voronoi interval would touch (e.g. codes {0, 253/255}, pixel 152/255,
//    eps 0.1) are left out, because no float32 input reaches them.
// The double test fabs(double(x') - double(x)) <= eps is the distance every
// part of pixdisc uses; its one rounding can only accept a float that exceeds
// eps by at most half an ulp of eps (never reject one within eps), so the set
// errs on the sound side for certification.
// l2 squares the float distance; squares can underflow to equal values only
// for distances below 2^-63, so the monotonicity argument needs distinct code
// values at least 2^-60 apart. Codebooks that break this (never the case for
// codes learned from 8-bit data) fall back to the sound rule, which is sound
// for any codebook.
struct SortedCodes {
  std::vector<int32_t> order;  // distinct-valued codes (lowest index each), by value
  std::vector<float> values;   // codes[order[r]], ascending
  double min_gap = std::numeric_limits<double>::infinity();  // smallest gap between distinct values
  explicit SortedCodes(const std::vector<float>& codes) {
    const int k = static_cast<int>(codes.size());
    std::vector<int32_t> all(k);
    std::iota(all.begin(), all.end(), 0);
    std::stable_sort(all.begin(), all.end(), [&](int32_t a, int32_t b) { return codes[a] < codes[b]; });
    for (int32_t j : all)
      if (order.empty() || codes[order.back()] != codes[j]) order.push_back(j);
    for (int32_t j : order) values.push_back(codes[j]);
    for (size_t r = 1; r < values.size(); ++r) min_gap = std::min(min_gap, double(values[r]) - double(values[r - 1]));
  }
  // Ranks [first, last] of the distinct values in [lo, hi] (both code values).
  void ranks(float lo, float hi, int32_t& first, int32_t& last) const {
    first = static_cast<int32_t>(std::lower_bound(values.begin(), values.end(), lo) - values.begin());
    last = static_cast<int32_t>(std::upper_bound(values.begin(), values.end(), hi) - values.begin()) - 1;
  }
};

// The distance test every part of pixdisc applies to an input value u.
inline bool within_eps(float u, float x, double eps) { return std::fabs(double(u) - double(x)) <= eps; }

// Non-negative floats order like their bit patterns.
inline uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}
inline float bits_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// The float32 end of the ball beyond `inside` (a float within eps of x), towards
// `limit` (0 or 1). For floats on one side of x the test is monotone, so the
// end is found by bisection over bit patterns: at most 31 probes. Needed only
// where the float64 rounding of the test accepts floats beyond the float32
// nearest to x -/+ eps (x - eps tiny next to x, so |u - x| rounds); elsewhere
// the first probe already fails.
float outer_end(float inside, float limit, float x, double eps) {
  if (inside == limit) return inside;
  const float next = std::nextafter(inside, limit);
  if (!within_eps(next, x, eps)) return inside;
  if (within_eps(limit, x, eps)) return limit;
  uint32_t good = float_bits(next), bad = float_bits(limit);  // inside / outside, limit >= +0
  while ((good > bad ? good - bad : bad - good) > 1) {
    const uint32_t mid = good / 2 + bad / 2 + (good & bad & 1u);
    (within_eps(bits_float(mid), x, eps) ? good : bad) = mid;
  }
  return bits_float(good);
}

// Smallest (lo) and largest (hi) float32 u in [0, 1] with within_eps(u, x, eps).
// x itself qualifies, so both exist. Round the float64 ends of
// [x - eps, x + eps] ∩ [0, 1] to float32 (std::max/min give +0, never -0);
// rounding leaves the ball by at most one float, so step back towards x while
// outside, then move outwards while the next float still qualifies.
void ball_ends(float x, double eps, float& lo, float& hi) {
  lo = static_cast<float>(std::max(0.0, double(x) - eps));  // <= x
  while (!within_eps(lo, x, eps)) lo = std::nextafter(lo, x);
  lo = outer_end(lo, 0.0f, x, eps);
  hi = static_cast<float>(std::min(1.0, double(x) + eps));  // >= x
  while (!within_eps(hi, x, eps)) hi = std::nextafter(hi, x);
  hi = outer_end(hi, 1.0f, x, eps);
}

// True when the exact rule's monotonicity argument holds for this codebook.
bool exact_rule_applies(const NearestIndex& index, const SortedCodes& sorted) {
  return index.metric() != Metric::l2 || sorted.min_gap >= std::ldexp(1.0, -60);
}

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

// Tight rule: j leaves the sound set when one code i beats it everywhere on
// the box B = prod_c [lo_c, hi_c] (the float32 ends of the ball per channel),
// by more than kTightSlack: min over B of q(p, c_j) - q(p, c_i) > tau, where q
// is the kernel's distance (squared for l2). The kernel picks j at p only if
// its float distance is at most i's, which in the reals means
// q(p, c_j) <= q(p, c_i) + 4.4e-6 < q + tau (see kTightSlack): such a j is
// never dropped. Each minimum is taken in real arithmetic (double, errors
// ~1e-16, far below tau):
//  - l2: q(p,j) - q(p,i) = sum_c (i_c - j_c)(2 p_c - i_c - j_c), linear in
//    each p_c: the minimum is at lo_c or hi_c, channel by channel.
//  - l1: sum_c |p_c - j_c| - |p_c - i_c|, separable, and each term is monotone
//    in p_c (constant, linear between i_c and j_c, constant): the minimum is at
//    lo_c or hi_c, channel by channel.
//  - linf: some p has max_c |p_c - j_c| <= max_c |p_c - i_c| + tau iff for
//    some channel c' (the one where i's distance is largest) there is an s in
//    [lo_c', hi_c'] with |s - j_c'| - |s - i_c'| <= tau and
//    |s - i_c'| >= M - tau, M = max over the other channels c of the distance
//    from j_c to [lo_c, hi_c] (those channels move to it freely). The first
//    set is a half-line in s (|s-j| - |s-i| is monotone), the second the
//    outside of an interval: both are intersected exactly.
// A dominator of j is always closer to x than j, so it is in the sound set:
// scanning only the sound set loses nothing.
bool linf_channel_admits(double lo, double hi, double j, double i, double m, double tau) {
  double a = lo, b = hi;  // [a, b] = [lo, hi] ∩ {s : |s - j| - |s - i| <= tau}
  if (j < i && tau < i - j) b = std::min(b, 0.5 * (i + j + tau));
  if (j > i && tau < j - i) a = std::max(a, 0.5 * (i + j - tau));
  if (a > b) return false;
  const double r = m - tau;  // need |s - i| >= r
  if (r <= 0.0) return true;
  return a <= i - r || b >= i + r;
}

template <int C>
bool dominated(Metric metric, const double* lo, const double* hi, const float* j, const float* i, double tau) {
  if (metric == Metric::l2) {
    double least = 0.0;
    for (int c = 0; c < C; ++c) {
      const double w = double(i[c]) - double(j[c]), s = double(i[c]) + double(j[c]);
      least += std::min(w * (2.0 * lo[c] - s), w * (2.0 * hi[c] - s));
    }
    return least > tau;
  }
  if (metric == Metric::l1) {
    double least = 0.0;
    for (int c = 0; c < C; ++c) {
      const double jc = j[c], ic = i[c];
      auto g = [&](double p) { return std::fabs(p - jc) - std::fabs(p - ic); };
      least += std::min(g(lo[c]), g(hi[c]));
    }
    return least > tau;
  }
  double gap[C];  // distance from j_c to [lo_c, hi_c]
  for (int c = 0; c < C; ++c) gap[c] = std::max({0.0, lo[c] - double(j[c]), double(j[c]) - hi[c]});
  for (int c = 0; c < C; ++c) {
    double m = 0.0;
    for (int o = 0; o < C; ++o)
      if (o != c) m = std::max(m, gap[o]);
    if (linf_channel_admits(lo[c], hi[c], j[c], i[c], m, tau)) return false;
  }
  return true;
}

// Members of one pixel under the tight rule (star first, then ascending).
template <int C>
void tight_members(const NearestIndex& index, const float* pixel, double eps, double threshold_extra, int star,
                   std::vector<int32_t>& sound, std::vector<int32_t>& out) {
  const std::vector<float>& codes = index.codes();
  const Metric metric = index.metric();
  const double limit = true_distance<C>(metric, pixel, 1, codes.data() + star * C) + threshold_extra;
  sound.clear();
  for (int j = 0; j < index.k(); ++j)
    if (j == star || true_distance<C>(metric, pixel, 1, codes.data() + j * C) <= limit) sound.push_back(j);
  double lo[C], hi[C];
  for (int c = 0; c < C; ++c) {
    float l, h;
    ball_ends(pixel[c], eps, l, h);
    lo[c] = l;
    hi[c] = h;
  }
  out.clear();
  out.push_back(star);
  for (int32_t j : sound) {
    if (j == star) continue;
    bool beaten = false;
    for (int32_t i : sound)
      if (i != j && dominated<C>(metric, lo, hi, codes.data() + j * C, codes.data() + i * C, kTightSlack)) {
        beaten = true;
        break;
      }
    if (!beaten) out.push_back(j);
  }
}

template <int C>
void tight_sets(const NearestIndex& index, const float* x, PixelLayout layout, double eps, bool counts_only,
                CandidateSets& out) {
  const double threshold_extra = 2.0 * pixel_move(index.metric(), C, eps) + kCandidateSlack;
  const int64_t n = layout.pixels(), inner = layout.inner;
  std::vector<int32_t> counts(n);
  out.nearest.resize(n);
  // Pass 1 counts, pass 2 fills: the same deterministic function both times.
  for (int pass = 0; pass < (counts_only ? 1 : 2); ++pass) {
    if (pass == 1) {
      out.offsets.assign(n + 1, 0);
      for (int64_t p = 0; p < n; ++p) out.offsets[p + 1] = out.offsets[p] + counts[p];
      out.members.resize(out.offsets[n]);
    }
    parallel_for(n, 1024, [&](int64_t begin, int64_t end, int) {
      std::vector<int32_t> sound, members;
      int64_t o = begin / inner, i = begin % inner;
      for (int64_t p = begin; p < end; ++p) {
        float contiguous[C];
        for (int c = 0; c < C; ++c) {
          contiguous[c] = x[o * C * inner + i + c * inner];
          if (!in_unit_range(contiguous[c])) {
            std::ostringstream msg;
            msg << "pixel values must lie in [0, 1] (float input) but found " << contiguous[c];
            throw std::invalid_argument(msg.str());
          }
        }
        if (pass == 0) out.nearest[p] = index.nearest(contiguous);
        tight_members<C>(index, contiguous, eps, threshold_extra, out.nearest[p], sound, members);
        if (pass == 0) counts[p] = static_cast<int32_t>(members.size());
        else std::copy(members.begin(), members.end(), out.members.begin() + out.offsets[p]);
        if (++i == inner) { i = 0; ++o; }
      }
    });
  }
  if (counts_only) {
    out.offsets.assign(n + 1, 0);
    for (int64_t p = 0; p < n; ++p) out.offsets[p + 1] = out.offsets[p] + counts[p];
  }
}

void exact_sets(const NearestIndex& index, const SortedCodes& sorted, const float* x, PixelLayout layout,
                double eps, bool counts_only, CandidateSets& out) {
  const std::vector<float>& codes = index.codes();
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
      const int star = index.nearest(&v);
      out.nearest[p] = star;
      float lo, hi;
      ball_ends(v, eps, lo, hi);
      sorted.ranks(codes[index.nearest(&lo)], codes[index.nearest(&hi)], first[p], last[p]);
      // nearest(x) is one of the reachable codes, and the lowest index of its value.
      const int32_t r = static_cast<int32_t>(
          std::lower_bound(sorted.values.begin(), sorted.values.end(), codes[star]) - sorted.values.begin());
      if (r < first[p] || r > last[p] || sorted.order[r] != star)
        throw std::logic_error("internal error: the nearest code is not in its exact candidate set");
    }
  });
  out.offsets.assign(n + 1, 0);
  for (int64_t p = 0; p < n; ++p) out.offsets[p + 1] = out.offsets[p] + (last[p] - first[p] + 1);
  if (counts_only) return;
  out.members.resize(out.offsets[n]);
  parallel_for(n, 4096, [&](int64_t begin, int64_t end, int) {
    std::vector<int32_t> others;
    for (int64_t p = begin; p < end; ++p) {
      int64_t w = out.offsets[p];
      const int star = out.nearest[p];
      out.members[w++] = star;
      others.clear();
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
    const SortedCodes sorted(index.codes());
    if (exact_rule_applies(index, sorted)) {
      exact_sets(index, sorted, x, layout, eps, counts_only, out);
      return out;
    }
    sound_sets<1>(index, x, layout, eps, counts_only, out);  // see exact_rule_applies
    return out;
  }
  if (rule == CandidateRule::tight) {
    switch (index.channels()) {
      case 1: tight_sets<1>(index, x, layout, eps, counts_only, out); break;
      case 2: tight_sets<2>(index, x, layout, eps, counts_only, out); break;
      case 3: tight_sets<3>(index, x, layout, eps, counts_only, out); break;
      case 4: tight_sets<4>(index, x, layout, eps, counts_only, out); break;
      default: throw std::invalid_argument("unsupported channel count");
    }
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
