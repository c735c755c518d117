// CUDA kernels of pixdisc._cuda: grid-stride loops over the same per-pixel
// functions the CPU uses (pixdisc/metric.hpp), so CPU tests cover their logic.
#include <cuda_runtime.h>

#include "cuda_check.hpp"

#include <sstream>
#include <stdexcept>
#include <string>

#include "launch.hpp"
#include "pixdisc/candidates.hpp"
#include "pixdisc/metric.hpp"

namespace pixdisc::cuda {

namespace {

using detail::blocks_for;
using detail::check;
using detail::DeviceGuard;

template <typename T>
__device__ __forceinline__ float to_unit(T v);
template <>
__device__ __forceinline__ float to_unit<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_unit<uint8_t>(uint8_t v) { return u8_to_unit(v); }

// Codes live in shared memory when they fit (48 KiB is available everywhere).
constexpr int kSharedCodeFloats = 48 * 1024 / sizeof(float);

template <Metric M, int C, typename T>
__global__ void nearest_kernel(const T* __restrict__ x, int64_t outer, int64_t inner, const float* __restrict__ codes,
                               const T* __restrict__ value_table, int k, int32_t* __restrict__ index,
                               T* __restrict__ out, int* __restrict__ bad) {
  extern __shared__ float shared_codes[];
  const bool use_shared = k * C <= kSharedCodeFloats;
  if (use_shared) {
    for (int e = threadIdx.x; e < k * C; e += blockDim.x) shared_codes[e] = codes[e];
    __syncthreads();
  }
  const float* code_table = use_shared ? shared_codes : codes;
  const int64_t n = outer * inner;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = p / inner, i = p - o * inner;
    const int64_t base = o * C * inner + i;
    float pixel[C];
    bool ok = true;
    for (int c = 0; c < C; ++c) {
      pixel[c] = to_unit(x[base + c * inner]);
      ok = ok && in_unit_range(pixel[c]);
    }
    int j = 0;
    if (ok) {
      j = nearest_code<M, C>(pixel, 1, code_table, k);
    } else {
      atomicExch(bad, 1);
    }
    if (index) index[p] = j;
    if (out)
      for (int c = 0; c < C; ++c) out[base + c * inner] = value_table[j * C + c];
  }
}

template <Metric M, int C, typename T>
void launch_nearest(const T* x, int64_t outer, int64_t inner, const float* codes, const T* table, int k,
                    int32_t* index, T* out, int* bad, cudaStream_t stream) {
  const int threads = 256;
  const size_t shared = k * C <= kSharedCodeFloats ? size_t(k) * C * sizeof(float) : 0;
  nearest_kernel<M, C, T><<<blocks_for(outer * inner, threads), threads, shared, stream>>>(
      x, outer, inner, codes, table, k, index, out, bad);
}

template <typename T>
void dispatch_nearest(int metric, int channels, const T* x, int64_t outer, int64_t inner, const float* codes,
                      const T* table, int k, int32_t* index, T* out, int* bad, cudaStream_t stream) {
#define PIXDISC_CASE(MID, M, C) \
  if (metric == MID && channels == C) return launch_nearest<M, C, T>(x, outer, inner, codes, table, k, index, out, bad, stream);
#define PIXDISC_CASES(C) PIXDISC_CASE(0, Metric::linf, C) PIXDISC_CASE(1, Metric::l1, C) PIXDISC_CASE(2, Metric::l2, C)
  PIXDISC_CASES(1)
  PIXDISC_CASES(2)
  PIXDISC_CASES(3)
  PIXDISC_CASES(4)
#undef PIXDISC_CASES
#undef PIXDISC_CASE
  throw std::invalid_argument("unsupported metric or channel count");
}

__global__ void histogram_gray_kernel(const uint8_t* __restrict__ x, int64_t n, unsigned long long* table) {
  __shared__ unsigned int local[256];
  for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(&local[x[p]], 1u);
  __syncthreads();
  for (int b = threadIdx.x; b < 256; b += blockDim.x)
    if (local[b]) atomicAdd(&table[b], static_cast<unsigned long long>(local[b]));
}

__global__ void histogram_color_kernel(const uint8_t* __restrict__ x, int64_t outer, int channels, int64_t inner,
                                       unsigned long long* table) {
  const int64_t n = outer * inner;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = p / inner, i = p - o * inner;
    const int64_t base = o * channels * inner + i;
    uint32_t key = 0;
    for (int c = 0; c < channels; ++c) key = (key << 8) | x[base + c * inner];
    atomicAdd(&table[key], 1ull);
  }
}

__global__ void broadcast_base_kernel(const float* __restrict__ base, int64_t image_size, int64_t count,
                                      float* __restrict__ out) {
  const int64_t n = image_size * count;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    out[e] = base[e % image_size];
}

__global__ void place_candidates_kernel(const int64_t* __restrict__ positions, int64_t channel_stride,
                                        const int64_t* __restrict__ offsets, const uint64_t* __restrict__ strides,
                                        const int32_t* __restrict__ members, int n_ambiguous,
                                        const float* __restrict__ codes, int channels, uint64_t rank_start,
                                        int64_t count, int64_t image_size, float* __restrict__ out) {
  const int64_t n = count * n_ambiguous;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = t / n_ambiguous, j = t - b * n_ambiguous;
    const int32_t radix = static_cast<int32_t>(offsets[j + 1] - offsets[j]);
    const int32_t code = members[offsets[j] + mixed_radix_digit(rank_start + uint64_t(b), strides[j], radix)];
    float* image = out + b * image_size;
    for (int c = 0; c < channels; ++c) image[positions[j] + c * channel_stride] = codes[code * channels + c];
  }
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  std::ostringstream s;
  s << v / 1000 << "." << (v % 1000) / 10;
  return s.str();
}

void nearest(const void* x, bool x_is_u8, int64_t outer, int channels, int64_t inner, const float* codes,
             const void* value_table, int k, int metric, int32_t* index, void* out, uintptr_t stream_handle,
             int device) {
  if (k <= 0) throw std::invalid_argument("the codebook is empty");
  if (outer * inner == 0) return;
  DeviceGuard guard(device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  int* bad = nullptr;
  check(cudaMallocAsync(&bad, sizeof(int), stream), "cudaMallocAsync");
  check(cudaMemsetAsync(bad, 0, sizeof(int), stream), "cudaMemsetAsync");
  if (x_is_u8) {
    dispatch_nearest(metric, channels, static_cast<const uint8_t*>(x), outer, inner, codes,
                     static_cast<const uint8_t*>(value_table), k, index, static_cast<uint8_t*>(out), bad, stream);
  } else {
    dispatch_nearest(metric, channels, static_cast<const float*>(x), outer, inner, codes,
                     static_cast<const float*>(value_table), k, index, static_cast<float*>(out), bad, stream);
  }
  check(cudaGetLastError(), "nearest_kernel launch");
  int host_bad = 0;
  check(cudaMemcpyAsync(&host_bad, bad, sizeof(int), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check(cudaFreeAsync(bad, stream), "cudaFreeAsync");
  check(cudaStreamSynchronize(stream), "nearest_kernel");
  if (host_bad) throw std::invalid_argument("pixel values must lie in [0, 1] (float input); found NaN, inf or a value outside");
}

void histogram_u8(const uint8_t* x, int64_t outer, int channels, int64_t inner, int64_t* table, uintptr_t stream_handle,
                  int device) {
  if (channels < 1 || channels > 3) throw std::invalid_argument("the CUDA histogram takes 1 to 3 channels");
  const int64_t n = outer * inner;
  if (n == 0) return;
  DeviceGuard guard(device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  auto* t = reinterpret_cast<unsigned long long*>(table);
  const int threads = 256;
  if (channels == 1) {
    histogram_gray_kernel<<<blocks_for(n, threads * 16), threads, 0, stream>>>(x, n, t);
  } else {
    histogram_color_kernel<<<blocks_for(n, threads), threads, 0, stream>>>(x, outer, channels, inner, t);
  }
  check(cudaGetLastError(), "histogram kernel launch");
  check(cudaStreamSynchronize(stream), "histogram kernel");
}

void enumerate_candidates(const float* base, int64_t image_size, const int64_t* positions, int64_t channel_stride,
                          const int64_t* offsets, const uint64_t* strides, const int32_t* members, int n_ambiguous,
                          const float* codes, int channels, uint64_t rank_start, int64_t count, float* out,
                          uintptr_t stream_handle, int device) {
  if (count <= 0) return;
  DeviceGuard guard(device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int threads = 256;
  broadcast_base_kernel<<<blocks_for(image_size * count, threads), threads, 0, stream>>>(base, image_size, count, out);
  check(cudaGetLastError(), "broadcast_base_kernel launch");
  if (n_ambiguous > 0) {
    place_candidates_kernel<<<blocks_for(count * n_ambiguous, threads), threads, 0, stream>>>(
        positions, channel_stride, offsets, strides, members, n_ambiguous, codes, channels, rank_start, count,
        image_size, out);
    check(cudaGetLastError(), "place_candidates_kernel launch");
  }
  // No synchronisation: the caller's next kernel on this stream (the model) waits in order.
}

}  // namespace pixdisc::cuda
