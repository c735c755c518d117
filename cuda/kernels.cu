// CUDA kernels of pixdisc._cuda: grid-stride loops over the same per-pixel
// functions the CPU uses (pixdisc/metric.hpp), so CPU tests cover their logic.
#include <cuda_runtime.h>

#include "cuda_check.hpp"

#include <cmath>
#include <sstream>
#include <vector>
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
// What out receives for a pixel outside [0, 1]: NaN (only float input can be outside).
template <typename T>
__device__ __forceinline__ T invalid_value() { return T(0); }
template <>
__device__ __forceinline__ float invalid_value<float>() { return __int_as_float(0x7fc00000); }
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
      for (int c = 0; c < C; ++c) out[base + c * inner] = ok ? value_table[j * C + c] : invalid_value<T>();
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
  dispatch_metric_channels(static_cast<Metric>(metric), channels, [&](auto m, auto c) {
    launch_nearest<decltype(m)::value, decltype(c)::value, T>(x, outer, inner, codes, table, k, index, out, bad,
                                                              stream);
  });
}

// The 8-bit key of pixel (o, i); false for a float off the 1/255 grid.
__device__ __forceinline__ bool pixel_key(const uint8_t* x, int64_t base, int channels, int64_t inner, uint32_t& key) {
  key = 0;
  for (int c = 0; c < channels; ++c) key = (key << 8) | x[base + c * inner];
  return true;
}
__device__ __forceinline__ bool pixel_key(const float* x, int64_t base, int channels, int64_t inner, uint32_t& key) {
  key = 0;
  for (int c = 0; c < channels; ++c) {
    uint32_t level = 0;
    if (!on_u8_grid(x[base + c * inner], &level)) return false;
    key = (key << 8) | level;
  }
  return true;
}

template <typename T>
__global__ void histogram_gray_kernel(const T* __restrict__ x, int64_t n, unsigned long long* table,
                                      int* __restrict__ off_grid) {
  __shared__ unsigned int local[256];
  for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    uint32_t key;
    if (pixel_key(x, p, 1, 1, key)) {
      atomicAdd(&local[key], 1u);
    } else {
      atomicExch(off_grid, 1);
    }
  }
  __syncthreads();
  for (int b = threadIdx.x; b < 256; b += blockDim.x)
    if (local[b]) atomicAdd(&table[b], static_cast<unsigned long long>(local[b]));
}

template <typename T>
__global__ void histogram_color_kernel(const T* __restrict__ x, int64_t outer, int channels, int64_t inner,
                                       unsigned long long* table, int* __restrict__ off_grid) {
  const int64_t n = outer * inner;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = p / inner, i = p - o * inner;
    uint32_t key;
    if (pixel_key(x, o * channels * inner + i, channels, inner, key)) {
      atomicAdd(&table[key], 1ull);
    } else {
      atomicExch(off_grid, 1);
    }
  }
}

template <typename T>
void launch_histogram(const T* x, int64_t outer, int channels, int64_t inner, unsigned long long* table,
                      int* off_grid, cudaStream_t stream) {
  const int64_t n = outer * inner;
  const int threads = 256;
  if (channels == 1) {
    histogram_gray_kernel<T><<<blocks_for(n, threads * 16), threads, 0, stream>>>(x, n, table, off_grid);
  } else {
    histogram_color_kernel<T><<<blocks_for(n, threads), threads, 0, stream>>>(x, outer, channels, inner, table,
                                                                             off_grid);
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

int pointer_device(const void* p, const char* name) {
  cudaPointerAttributes attributes{};
  const cudaError_t err = cudaPointerGetAttributes(&attributes, p);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it so later calls do not see it
    throw std::invalid_argument(std::string(name) + " is not CUDA memory (" + cudaGetErrorString(err) + ")");
  }
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(std::string(name) + " is host memory; the CUDA kernels need device memory");
  return attributes.device;
}

// Where an out-of-range pixel was, when an unchecked call may have seen it.
constexpr const char* kEarlier =
    " in an earlier unchecked call on this codebook (a Discretize forward pass; its output holds NaN there)";
constexpr const char* kThisOrEarlier =
    " in this call or an earlier unchecked one on this codebook (a Discretize forward pass; its output holds NaN "
    "there)";

DeviceNearestIndex::DeviceNearestIndex(const float* codes, int k, int channels, int metric, int device)
    : k_(k), channels_(channels), metric_(metric), device_(device) {
  if (k <= 0) throw std::invalid_argument("the codebook is empty");
  // Fails early (not at the first call) on an unsupported metric or channel count.
  dispatch_metric_channels(static_cast<Metric>(metric), channels, [](auto, auto) {});
  DeviceGuard guard(device);
  const size_t n = size_t(k) * channels;
  try {
    check(cudaMalloc(&codes_, n * sizeof(float)), "cudaMalloc (codes)");
    check(cudaMalloc(&codes_u8_, n), "cudaMalloc (uint8 codes)");
    check(cudaMalloc(&bad_, sizeof(int)), "cudaMalloc (flag)");
    check(cudaMallocHost(&host_bad_, sizeof(int)), "cudaMallocHost (flag)");
    cudaEvent_t event;
    check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
    copied_ = event;
    // Rounded on the host exactly as NearestIndex rounds its codes_u8_.
    std::vector<uint8_t> rounded(n);
    for (size_t e = 0; e < n; ++e) rounded[e] = static_cast<uint8_t>(std::nearbyint(codes[e] * 255.0f));
    check(cudaMemcpy(codes_, codes, n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy (codes)");
    check(cudaMemcpy(codes_u8_, rounded.data(), n, cudaMemcpyHostToDevice), "cudaMemcpy (uint8 codes)");
    check(cudaMemset(bad_, 0, sizeof(int)), "cudaMemset (flag)");
    *host_bad_ = 0;
  } catch (...) {
    release();
    throw;
  }
}

DeviceNearestIndex::~DeviceNearestIndex() { release(); }

void DeviceNearestIndex::release() {
  // Never throws: at interpreter exit the context may already be gone.
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) return;
  cudaSetDevice(device_);
  if (copied_) cudaEventDestroy(static_cast<cudaEvent_t>(copied_));
  cudaFree(codes_);
  cudaFree(codes_u8_);
  cudaFree(bad_);
  cudaFreeHost(host_bad_);
  codes_ = nullptr;
  codes_u8_ = nullptr;
  bad_ = nullptr;
  host_bad_ = nullptr;
  copied_ = nullptr;
  cudaSetDevice(previous);
  cudaGetLastError();
}

void DeviceNearestIndex::report(const char* where) {
  if (!*host_bad_) return;
  *host_bad_ = 0;
  check(cudaMemset(bad_, 0, sizeof(int)), "cudaMemset (flag)");
  throw std::invalid_argument(std::string("pixel values must lie in [0, 1] (float input); found NaN, inf or a value "
                                          "outside") + where);
}

void DeviceNearestIndex::run(const void* x, bool x_is_u8, int64_t outer, int64_t inner, int32_t* index, void* out,
                             uintptr_t stream_handle, bool check_now) {
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceGuard guard(device_);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  auto copied = static_cast<cudaEvent_t>(copied_);
  if (pending_ && cudaEventQuery(copied) == cudaSuccess) {  // never waits
    pending_ = false;
    report(kEarlier);
  }
  if (outer * inner > 0) {
    if (x_is_u8) {
      dispatch_nearest(metric_, channels_, static_cast<const uint8_t*>(x), outer, inner, codes_, codes_u8_, k_, index,
                       static_cast<uint8_t*>(out), bad_, stream);
    } else {
      dispatch_nearest(metric_, channels_, static_cast<const float*>(x), outer, inner, codes_,
                       static_cast<const float*>(codes_), k_, index, static_cast<float*>(out), bad_, stream);
    }
    check(cudaGetLastError(), "nearest_kernel launch");
  }
  if (x_is_u8 && !pending_) return;  // uint8 pixels are always valid
  check(cudaMemcpyAsync(host_bad_, bad_, sizeof(int), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (flag)");
  check(cudaEventRecord(copied, stream), "cudaEventRecord");
  if (!check_now) {
    pending_ = true;
    return;
  }
  check(cudaEventSynchronize(copied), "nearest_kernel");
  const bool earlier = pending_;
  pending_ = false;
  report(earlier ? kThisOrEarlier : "");
}

bool histogram(const void* x, bool x_is_u8, int64_t outer, int channels, int64_t inner, int64_t* table,
               uintptr_t stream_handle, int device) {
  if (channels < 1 || channels > 3) throw std::invalid_argument("the CUDA histogram takes 1 to 3 channels");
  if (outer * inner == 0) return true;
  DeviceGuard guard(device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  auto* t = reinterpret_cast<unsigned long long*>(table);
  // A histogram answers on the host anyway, so this call waits; its flag is
  // stream-ordered scratch from the pool, not a per-call cudaMalloc.
  int* off_grid = nullptr;
  check(cudaMallocAsync(&off_grid, sizeof(int), stream), "cudaMallocAsync");
  int host_off_grid = 0;
  try {
    check(cudaMemsetAsync(off_grid, 0, sizeof(int), stream), "cudaMemsetAsync");
    if (x_is_u8) {
      launch_histogram(static_cast<const uint8_t*>(x), outer, channels, inner, t, off_grid, stream);
    } else {
      launch_histogram(static_cast<const float*>(x), outer, channels, inner, t, off_grid, stream);
    }
    check(cudaGetLastError(), "histogram kernel launch");
    check(cudaMemcpyAsync(&host_off_grid, off_grid, sizeof(int), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  } catch (...) {
    cudaFreeAsync(off_grid, stream);
    cudaStreamSynchronize(stream);
    throw;
  }
  check(cudaFreeAsync(off_grid, stream), "cudaFreeAsync");
  check(cudaStreamSynchronize(stream), "histogram kernel");
  return host_off_grid == 0;
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
