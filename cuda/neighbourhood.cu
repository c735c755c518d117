// CUDA neighbourhood sizes: summed-area table by three scan kernels, then a
// grid-stride query over the host-and-device box sum of pixdisc/neighbourhood.hpp.
#include <cuda_runtime.h>

#include "cuda_check.hpp"

#include <stdexcept>
#include <string>

#include "neighbourhood.hpp"
#include "pixdisc/neighbourhood.hpp"

namespace pixdisc::cuda {

namespace {

using detail::blocks_for;
using detail::check;
using detail::DeviceGuard;

// Inclusive scan of contiguous rows of 256 entries: one block of exactly
// kLevels threads per row (Hillis-Steele in shared memory, 8 steps).
__global__ void scan_rows_kernel(int64_t* __restrict__ table, int64_t rows) {
  __shared__ int64_t row_values[kLevels];
  const int lane = threadIdx.x;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    int64_t* base = table + row * kLevels;
    row_values[lane] = base[lane];
    __syncthreads();
    for (int offset = 1; offset < kLevels; offset <<= 1) {
      const int64_t add = lane >= offset ? row_values[lane - offset] : 0;
      __syncthreads();
      row_values[lane] += add;
      __syncthreads();
    }
    base[lane] = row_values[lane];
    __syncthreads();  // the next row reuses row_values
  }
}

// Inclusive scan along a strided axis, one thread per column: column c starts
// at (c / inner) * outer_stride + c % inner and steps by `step`. Consecutive
// threads take consecutive b, so every step is a coalesced row access.
__global__ void scan_columns_kernel(int64_t* __restrict__ table, int64_t columns, int64_t inner, int64_t outer_stride,
                                    int64_t step) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < columns; c += int64_t(gridDim.x) * blockDim.x) {
    int64_t* entry = table + (c / inner) * outer_stride + c % inner;
    int64_t running = entry[0];
    for (int i = 1; i < kLevels; ++i) {
      running += entry[i * step];
      entry[i * step] = running;
    }
  }
}

__global__ void query_kernel(const int64_t* __restrict__ sat, int channels, const int64_t* __restrict__ keys,
                             int64_t n, int radius, int64_t* __restrict__ out) {
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < n; q += int64_t(gridDim.x) * blockDim.x)
    out[q] = neighbourhood_count_key(sat, channels, keys[q], radius);
}

}  // namespace

void summed_area_table(int64_t* table, int channels, uintptr_t stream_handle, int device) {
  if (channels != 1 && channels != 3)
    throw std::invalid_argument("summed-area tables take 1 or 3 channels, got " + std::to_string(channels));
  DeviceGuard guard(device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int64_t rows = channels == 1 ? 1 : kColourPlane;
  scan_rows_kernel<<<blocks_for(rows, 1), kLevels, 0, stream>>>(table, rows);
  check(cudaGetLastError(), "scan_rows_kernel launch");
  if (channels == 1) return;
  const int threads = 256;
  // Along g: columns (r, b), entry r * 2^16 + g * 256 + b.
  scan_columns_kernel<<<blocks_for(kColourPlane, threads), threads, 0, stream>>>(table, kColourPlane, kLevels,
                                                                                 kColourPlane, kLevels);
  check(cudaGetLastError(), "scan_columns_kernel (g) launch");
  // Along r: columns (g, b), entry r * 2^16 + (g * 256 + b).
  scan_columns_kernel<<<blocks_for(kColourPlane, threads), threads, 0, stream>>>(table, kColourPlane, kColourPlane,
                                                                                 0, kColourPlane);
  check(cudaGetLastError(), "scan_columns_kernel (r) launch");
}

void neighbourhood_query(const int64_t* sat, int channels, const int64_t* keys, int64_t n_queries, int radius,
                         int64_t* out, uintptr_t stream_handle, int device) {
  if (channels != 1 && channels != 3)
    throw std::invalid_argument("neighbourhood sizes take 1 or 3 channels, got " + std::to_string(channels));
  if (radius < 0) throw std::invalid_argument("the neighbourhood radius must be >= 0 levels, got " + std::to_string(radius));
  if (n_queries <= 0) return;
  DeviceGuard guard(device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int threads = 256;
  query_kernel<<<blocks_for(n_queries, threads), threads, 0, stream>>>(sat, channels, keys, n_queries, radius, out);
  check(cudaGetLastError(), "query_kernel launch");
  check(cudaStreamSynchronize(stream), "query_kernel");
}

}  // namespace pixdisc::cuda
