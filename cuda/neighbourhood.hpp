// Host-callable CUDA launchers for neighbourhood sizes (summed-area tables of
// 8-bit colour counts). Plain C++ declarations so the bindings compile without
// nvcc; every pointer is a device pointer owned by the caller (torch tensors)
// and every call is ordered on the given stream.
#pragma once

#include <cstdint>

namespace pixdisc::cuda {

// In place: a dense count table (int64, 256 entries for channels = 1, 256^3
// for channels = 3 with key (r << 16) | (g << 8) | b) becomes its inclusive
// summed-area table, by a shared-memory scan of the contiguous b rows and two
// column scans (along g, then r) in which neighbouring threads read
// neighbouring entries. Does not synchronise.
void summed_area_table(int64_t* table, int channels, uintptr_t stream, int device);

// out[q] = the table's count within `radius` levels (l_inf) of the colour
// with key keys[q], from the summed-area table of summed_area_table.
// Synchronises the stream so errors surface here.
void neighbourhood_query(const int64_t* sat, int channels, const int64_t* keys, int64_t n_queries, int radius,
                         int64_t* out, uintptr_t stream, int device);

}  // namespace pixdisc::cuda
