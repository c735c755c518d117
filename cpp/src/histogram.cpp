// CPU pixel histograms: dense per-worker tables for 8-bit data, sorting otherwise.
#include "pixdisc/histogram.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <type_traits>

namespace pixdisc {

namespace {

using CountTable = ZeroedArray<uint32_t>;

// Gray counting with four sub-histograms so consecutive equal bytes do not
// serialise on one counter (store-to-load forwarding stalls).
void count_bytes(const uint8_t* x, int64_t n, uint32_t (*sub)[256]) {
  int64_t p = 0;
  for (; p + 4 <= n; p += 4) {
    ++sub[0][x[p]];
    ++sub[1][x[p + 1]];
    ++sub[2][x[p + 2]];
    ++sub[3][x[p + 3]];
  }
  for (; p < n; ++p) ++sub[0][x[p]];
}

// Reads the 8-bit key of pixel (o, i). key() for floats also checks that the
// pixel is on the grid; trusted_key() skips that for a second pass over
// pixels key() already accepted.
struct U8Source {
  const uint8_t* x;
  bool key(int64_t base, int64_t inner, int channels, uint32_t& key) const {
    key = 0;
    for (int c = 0; c < channels; ++c) key = (key << 8) | x[base + c * inner];
    return true;
  }
  uint32_t trusted_key(int64_t base, int64_t inner, int channels) const {
    uint32_t k;
    key(base, inner, channels, k);
    return k;
  }
};

class FloatGridSource {
 public:
  explicit FloatGridSource(const float* x) : x_(x) {
    for (int v = 0; v < 256; ++v) grid_[v] = u8_to_unit(static_cast<uint8_t>(v));
  }
  bool key(int64_t base, int64_t inner, int channels, uint32_t& key) const {
    key = 0;
    for (int c = 0; c < channels; ++c) {
      const float v = x_[base + c * inner];
      if (!in_unit_range(v)) return false;  // also rejects NaN
      const uint32_t q = u8_level(v);
      // on_u8_grid (metric.hpp) tabulated: a lookup, not a division, per value.
      if (grid_[q] != v) return false;
      key = (key << 8) | q;
    }
    return true;
  }
  uint32_t trusted_key(int64_t base, int64_t inner, int channels) const {
    uint32_t key = 0;
    for (int c = 0; c < channels; ++c) key = (key << 8) | u8_level(x_[base + c * inner]);
    return key;
  }

 private:
  const float* x_;
  float grid_[256];
};

Histogram from_dense(const std::vector<CountTable>& tables, int channels) {
  const int64_t bins = int64_t(1) << (8 * channels);
  const int workers = planned_workers(bins, 1 << 16);
  std::vector<int64_t> nonzero(workers + 1, 0);
  uint32_t* total = tables[0].get();
  // Pass 1: fold all tables into the first and count distinct values per range.
  parallel_for(bins, 1 << 16, [&](int64_t begin, int64_t end, int w) {
    int64_t nz = 0;
    for (int64_t b = begin; b < end; ++b) {
      uint64_t s = total[b];
      for (size_t t = 1; t < tables.size(); ++t) s += tables[t][b];
      if (s > 0xffffffffu) throw std::runtime_error("histogram count overflow (more than 2^32 equal pixels)");
      total[b] = static_cast<uint32_t>(s);
      nz += s != 0;
    }
    nonzero[w + 1] = nz;
  });
  for (int w = 0; w < workers; ++w) nonzero[w + 1] += nonzero[w];
  Histogram h;
  h.channels = channels;
  h.on_u8_grid = true;
  h.values.resize(nonzero[workers] * channels);
  h.counts.resize(nonzero[workers]);
  // Pass 2: write the non-empty bins in key (= lexicographic) order.
  parallel_for(bins, 1 << 16, [&](int64_t begin, int64_t end, int w) {
    int64_t out = nonzero[w];
    for (int64_t b = begin; b < end; ++b) {
      if (!total[b]) continue;
      for (int c = 0; c < channels; ++c) {
        const int shift = 8 * (channels - 1 - c);
        h.values[out * channels + c] = u8_to_unit(static_cast<uint8_t>((b >> shift) & 0xff));
      }
      h.counts[out++] = total[b];
    }
  });
  return h;
}

// Dense counting for 2 or 3 channels (a 2^16 or 2^24 table per worker).
// Returns false when a float source met a value off the 1/255 grid.
template <typename Source>
bool dense_histogram(const Source& src, PixelLayout layout, Histogram& result) {
  const int channels = layout.channels;
  const size_t bins = size_t(1) << (8 * channels);
  const int64_t inner = layout.inner;
  // Each worker owns a table; cap the count so memory stays bounded on big machines.
  const int max_tables = channels == 3 ? 8 : 64;
  const int workers = planned_workers(layout.pixels(), 1 << 18, max_tables);
  std::vector<CountTable> tables;
  for (int w = 0; w < workers; ++w) tables.push_back(zeroed_array<uint32_t>(bins, "histogram table"));
  std::vector<char> off_grid(workers, 0);
  parallel_for(
      layout.pixels(), 1 << 18,
      [&](int64_t begin, int64_t end, int w) {
        if (end - begin >= (int64_t(1) << 32)) throw std::runtime_error("too many pixels for one histogram worker");
        uint32_t* table = tables[w].get();
        int64_t o = begin / inner, i = begin % inner;
        for (int64_t p = begin; p < end; ++p) {
          uint32_t key;
          if (!src.key(o * channels * inner + i, inner, channels, key)) {
            off_grid[w] = 1;
            return;
          }
          ++table[key];
          if (++i == inner) { i = 0; ++o; }
        }
      },
      max_tables);
  for (char f : off_grid)
    if (f) return false;
  result = from_dense(tables, channels);
  return true;
}

// Three channels: a 2^24 table per worker is a cache and TLB miss per pixel,
// so instead partition the 24-bit keys by their top byte (a streaming
// scatter of the low 16 bits) and count each partition in a 2^16 table that
// stays in L2. Returns false when a float source met a value off the grid.
template <typename Source>
bool radix_histogram3(const Source& src, PixelLayout layout, Histogram& result) {
  constexpr int kBuckets = 256;
  constexpr int64_t kLowKeys = int64_t(1) << 16;
  const int64_t n = layout.pixels(), inner = layout.inner;
  // Table counts are uint32: a partition could otherwise overflow.
  if (n >= (int64_t(1) << 32)) throw std::runtime_error("too many pixels for one histogram call (2^32)");
  const int workers = planned_workers(n, 1 << 18);
  std::vector<std::array<int64_t, kBuckets>> start(workers);
  std::vector<char> off_grid(workers, 0);
  // The first pass checks every pixel (floats must be on the grid); the second
  // pass reads the same pixels again and trusts them.
  auto for_each_key = [&](auto checked, int64_t begin, int64_t end, int w, auto&& fn) {
    auto read = [&](int64_t base, int64_t stride, uint32_t& key) {
      if constexpr (decltype(checked)::value) {
        return src.key(base, stride, 3, key);
      } else {
        key = src.trusted_key(base, stride, 3);
        return true;
      }
    };
    uint32_t key;
    if (inner == 1) {  // channels last (NHWC, (N, 3)): a plain walk without the (o, i) bookkeeping
      for (int64_t p = begin; p < end; ++p) {
        if (!read(p * 3, 1, key)) {
          off_grid[w] = 1;
          return;
        }
        fn(key);
      }
      return;
    }
    int64_t o = begin / inner, i = begin % inner;
    for (int64_t p = begin; p < end; ++p) {
      if (!read(o * 3 * inner + i, inner, key)) {
        off_grid[w] = 1;
        return;
      }
      fn(key);
      if (++i == inner) { i = 0; ++o; }
    }
  };
  parallel_for(n, 1 << 18, [&](int64_t begin, int64_t end, int w) {
    start[w].fill(0);
    for_each_key(std::true_type{}, begin, end, w, [&](uint32_t key) { ++start[w][key >> 16]; });
  });
  if (std::any_of(off_grid.begin(), off_grid.end(), [](char f) { return f != 0; })) return false;
  // Bucket-major offsets: bucket b holds worker 0's keys, then worker 1's, ...
  std::array<int64_t, kBuckets + 1> bucket_begin{};
  int64_t pos = 0;
  for (int b = 0; b < kBuckets; ++b) {
    bucket_begin[b] = pos;
    for (int w = 0; w < workers; ++w) {
      const int64_t c = start[w][b];
      start[w][b] = pos;
      pos += c;
    }
  }
  bucket_begin[kBuckets] = pos;
  BulkVector<uint16_t> low(static_cast<size_t>(n));  // every slot is written by the scatter
  parallel_for(n, 1 << 18, [&](int64_t begin, int64_t end, int w) {
    auto& cursor = start[w];
    for_each_key(std::false_type{}, begin, end, w,
                 [&](uint32_t key) { low[cursor[key >> 16]++] = static_cast<uint16_t>(key); });
  });
  // Count each bucket and compact its distinct low keys into a slot of at
  // most min(pixels, 2^16) entries; buckets are handed out dynamically since
  // real colour distributions are far from uniform over the top byte.
  std::array<int64_t, kBuckets + 1> slot{};
  for (int b = 0; b < kBuckets; ++b)
    slot[b + 1] = slot[b] + std::min(bucket_begin[b + 1] - bucket_begin[b], kLowKeys);
  BulkVector<uint16_t> distinct_low(static_cast<size_t>(slot[kBuckets]));
  BulkVector<uint32_t> distinct_count(static_cast<size_t>(slot[kBuckets]));
  std::array<int64_t, kBuckets> distinct{};
  std::atomic<int> next_bucket{0};
  const int table_workers = std::min(workers, kBuckets);
  parallel_for(
      table_workers, 1,
      [&](int64_t, int64_t, int) {
        std::vector<uint32_t> table(kLowKeys, 0u);
        for (int b; (b = next_bucket.fetch_add(1)) < kBuckets;) {
          for (int64_t p = bucket_begin[b]; p < bucket_begin[b + 1]; ++p) ++table[low[p]];
          uint16_t* keys = distinct_low.data() + slot[b];
          uint32_t* counts = distinct_count.data() + slot[b];
          // Compaction without a data-dependent branch, clearing the table for the
          // next bucket on the way: entry m is rewritten until a non-zero count
          // moves m on. m reaches the slot size only once every distinct key is
          // in; the (always predicted) guard keeps the writes for the remaining
          // empty keys inside the slot.
          int64_t m = 0;
          const int64_t size = slot[b + 1] - slot[b];
          for (int64_t v = 0; v < kLowKeys; ++v) {
            const uint32_t c = table[v];
            if (m < size) {
              keys[m] = static_cast<uint16_t>(v);
              counts[m] = c;
            }
            m += c != 0;
            table[v] = 0;
          }
          distinct[b] = m;
        }
      },
      table_workers);
  low = BulkVector<uint16_t>();  // release 2 bytes per pixel before the output is allocated
  std::array<int64_t, kBuckets + 1> out_begin{};
  for (int b = 0; b < kBuckets; ++b) out_begin[b + 1] = out_begin[b] + distinct[b];
  Histogram h;
  h.channels = 3;
  h.on_u8_grid = true;
  h.values.resize(static_cast<size_t>(out_begin[kBuckets]) * 3);  // all written below
  h.counts.resize(static_cast<size_t>(out_begin[kBuckets]));
  next_bucket = 0;
  parallel_for(
      table_workers, 1,
      [&](int64_t, int64_t, int) {
        for (int b; (b = next_bucket.fetch_add(1)) < kBuckets;) {
          const float high = u8_to_unit(static_cast<uint8_t>(b));
          const uint16_t* keys = distinct_low.data() + slot[b];
          const uint32_t* counts = distinct_count.data() + slot[b];
          float* values = h.values.data() + out_begin[b] * 3;
          int64_t* out_counts = h.counts.data() + out_begin[b];
          for (int64_t e = 0; e < distinct[b]; ++e) {
            values[e * 3 + 0] = high;
            values[e * 3 + 1] = u8_to_unit(static_cast<uint8_t>(keys[e] >> 8));
            values[e * 3 + 2] = u8_to_unit(static_cast<uint8_t>(keys[e]));
            out_counts[e] = counts[e];
          }
        }
      },
      table_workers);
  result = std::move(h);
  return true;
}

// Sort-based counting for arbitrary floats or 4-channel data.
template <int C>
Histogram sorted_histogram_t(const float* x, PixelLayout layout) {
  const int64_t n = layout.pixels(), inner = layout.inner;
  std::vector<std::array<float, C>> rows(n);
  for (int64_t p = 0, o = 0, i = 0; p < n; ++p) {
    for (int c = 0; c < C; ++c) {
      const float v = x[o * C * inner + c * inner + i];
      if (!in_unit_range(v)) {
        std::ostringstream msg;
        msg << "pixel values must lie in [0, 1] (float input) but found " << v;
        throw std::invalid_argument(msg.str());
      }
      rows[p][c] = v == 0.0f ? 0.0f : v;  // fold -0 into +0
    }
    if (++i == inner) { i = 0; ++o; }
  }
  std::sort(rows.begin(), rows.end());
  Histogram h;
  h.channels = C;
  for (int64_t p = 0; p < n;) {
    int64_t q = p + 1;
    while (q < n && rows[q] == rows[p]) ++q;
    h.values.insert(h.values.end(), rows[p].begin(), rows[p].end());
    h.counts.push_back(q - p);
    p = q;
  }
  return h;
}

Histogram sorted_histogram(const float* x, PixelLayout layout) {
  switch (layout.channels) {
    case 1: return sorted_histogram_t<1>(x, layout);
    case 2: return sorted_histogram_t<2>(x, layout);
    case 3: return sorted_histogram_t<3>(x, layout);
    case 4: return sorted_histogram_t<4>(x, layout);
  }
  throw std::invalid_argument("pixels must have 1 to 4 channels");
}

Histogram from_gray_counts(const int64_t* counts) {
  Histogram h;
  h.channels = 1;
  h.on_u8_grid = true;
  for (int v = 0; v < 256; ++v) {
    if (!counts[v]) continue;
    h.values.push_back(u8_to_unit(static_cast<uint8_t>(v)));
    h.counts.push_back(counts[v]);
  }
  return h;
}

void check_layout(PixelLayout layout) {
  if (layout.channels < 1 || layout.channels > kMaxChannels)
    throw std::invalid_argument("pixels must have 1 to 4 channels, got " + std::to_string(layout.channels));
  if (layout.outer < 0 || layout.inner < 0) throw std::invalid_argument("negative array extent");
}

}  // namespace

void histogram_gray_u8(const uint8_t* x, int64_t n, int64_t* counts) {
  const int workers = planned_workers(n, 1 << 18);
  std::vector<std::array<int64_t, 256>> totals(workers);
  parallel_for(n, 1 << 18, [&](int64_t begin, int64_t end, int w) {
    totals[w].fill(0);
    uint32_t tables[4][256];
    // Flush the 32-bit sub-histograms every 2^30 bytes so none can overflow.
    for (int64_t start = begin; start < end; start += int64_t(1) << 30) {
      std::memset(tables, 0, sizeof(tables));
      count_bytes(x + start, std::min(end, start + (int64_t(1) << 30)) - start, tables);
      for (int v = 0; v < 256; ++v)
        totals[w][v] += int64_t(tables[0][v]) + tables[1][v] + tables[2][v] + tables[3][v];
    }
  });
  for (int v = 0; v < 256; ++v) {
    counts[v] = 0;
    for (int w = 0; w < workers; ++w) counts[v] += totals[w][v];
  }
}

Histogram histogram_u8(const uint8_t* x, PixelLayout layout) {
  check_layout(layout);
  if (layout.channels == 1) {
    int64_t counts[256];
    histogram_gray_u8(x, layout.pixels(), counts);
    return from_gray_counts(counts);
  }
  if (layout.channels <= 3) {
    Histogram h;
    if (layout.channels == 3) radix_histogram3(U8Source{x}, layout, h);
    else dense_histogram(U8Source{x}, layout, h);
    return h;
  }
  // Four 8-bit channels: convert to floats on the grid and sort.
  const int64_t total = layout.pixels() * layout.channels;
  std::vector<float> as_float(total);
  for (int64_t e = 0; e < total; ++e) as_float[e] = u8_to_unit(x[e]);
  Histogram h = sorted_histogram(as_float.data(), layout);
  h.on_u8_grid = true;
  return h;
}

Histogram histogram_float(const float* x, PixelLayout layout) {
  check_layout(layout);
  if (layout.channels <= 3) {
    Histogram h;
    if (layout.channels == 1) {
      // Gray floats: try the 256-bin grid first.
      const int workers = planned_workers(layout.pixels(), 1 << 18);
      std::vector<std::array<int64_t, 256>> counts(workers);
      for (auto& c : counts) c.fill(0);
      std::vector<char> off_grid(workers, 0);
      FloatGridSource src{x};
      parallel_for(layout.pixels(), 1 << 18, [&](int64_t begin, int64_t end, int w) {
        for (int64_t p = begin; p < end; ++p) {
          uint32_t key;
          if (!src.key(p, 1, 1, key)) {
            off_grid[w] = 1;
            return;
          }
          ++counts[w][key];
        }
      });
      if (std::none_of(off_grid.begin(), off_grid.end(), [](char f) { return f != 0; })) {
        int64_t total[256] = {};
        for (auto& c : counts)
          for (int v = 0; v < 256; ++v) total[v] += c[v];
        return from_gray_counts(total);
      }
    } else if (layout.channels == 3 ? radix_histogram3(FloatGridSource{x}, layout, h)
                                     : dense_histogram(FloatGridSource{x}, layout, h)) {
      return h;
    }
  }
  return sorted_histogram(x, layout);
}

}  // namespace pixdisc
