// Host-callable CUDA launchers for pixdisc._cuda. Plain C++ declarations so
// the bindings compile without nvcc; all pointers are device pointers owned by
// the caller (torch tensors), and every call runs on the given stream.
#pragma once

#include <cstdint>
#include <string>

namespace pixdisc::cuda {

// Number of usable devices; 0 when there is no driver or device (never throws).
int device_count();
std::string runtime_version();

// Nearest code for every pixel of x viewed as (outer, channels, inner).
// x is float32 (x_is_u8 = false) or uint8; codes is float32 (k, channels);
// value_table is what `out` receives per code (float32 codes, or the codes
// rounded to uint8 for uint8 input). index (int32, outer*inner) and out
// (x's dtype and layout) may each be null. Synchronises the stream and throws
// std::invalid_argument when a float pixel lies outside [0, 1].
void nearest(const void* x, bool x_is_u8, int64_t outer, int channels, int64_t inner, const float* codes,
             const void* value_table, int k, int metric, int32_t* index, void* out, uintptr_t stream, int device);

// Adds the count of every 8-bit colour key (channel 0 most significant) of the
// uint8 pixels into table (int64, 2^(8*channels) entries, zeroed by the caller).
void histogram_u8(const uint8_t* x, int64_t outer, int channels, int64_t inner, int64_t* table, uintptr_t stream,
                  int device);

// Writes count candidate images of S(x) for ranks [rank_start, rank_start+count)
// into out (count * image_size floats): base everywhere, then each ambiguous
// pixel j set to code members[offsets[j] + digit_j]. strides/offsets/positions/
// members/codes/base are device arrays (see pixdisc/candidates.hpp).
void enumerate_candidates(const float* base, int64_t image_size, const int64_t* positions, int64_t channel_stride,
                          const int64_t* offsets, const uint64_t* strides, const int32_t* members, int n_ambiguous,
                          const float* codes, int channels, uint64_t rank_start, int64_t count, float* out,
                          uintptr_t stream, int device);

}  // namespace pixdisc::cuda
