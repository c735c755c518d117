// Host-callable CUDA launchers for pixdisc._cuda. Plain C++ declarations so
// the bindings compile without nvcc. Every pointer is a device pointer owned
// by the caller (a torch tensor held by Python for the whole call) unless a
// comment says otherwise, and every call is ordered on the given stream.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>

namespace pixdisc::cuda {

// Number of usable devices; 0 when there is no driver or device (never throws).
int device_count();
std::string runtime_version();

// The device that owns p; std::invalid_argument naming `name` when p is not
// device (or managed) memory, e.g. a host pointer.
int pointer_device(const void* p, const char* name);

// The nearest-code index of one codebook on one device: the CUDA counterpart
// of pixdisc::NearestIndex (brute force over the codes, which sit in shared
// memory). It owns device copies of the codes, of the codes rounded to uint8
// (the values uint8 input gets) and a flag for out-of-range pixels, all
// allocated once here, so a call allocates nothing.
class DeviceNearestIndex {
 public:
  // codes: host float32 (k, channels) row-major in [0, 1]; metric as pixdisc::Metric.
  DeviceNearestIndex(const float* codes, int k, int channels, int metric, int device);
  ~DeviceNearestIndex();
  DeviceNearestIndex(const DeviceNearestIndex&) = delete;
  DeviceNearestIndex& operator=(const DeviceNearestIndex&) = delete;

  int k() const { return k_; }
  int channels() const { return channels_; }
  int metric() const { return metric_; }
  int device() const { return device_; }

  // Nearest code of every pixel of x viewed as (outer, channels, inner); x is
  // float32 (x_is_u8 = false) or uint8. index (int32, outer*inner) and out
  // (x's dtype and layout; a float pixel outside [0, 1] gets NaN) may each be
  // null. A float pixel outside [0, 1] (NaN included) raises the device flag.
  // With check, the call waits for the stream and throws
  // std::invalid_argument when the flag is up. Without it (the BPDA forward
  // pass) nothing waits: the flag is copied back asynchronously and the next
  // call on this index that finds the copy done throws instead.
  void run(const void* x, bool x_is_u8, int64_t outer, int64_t inner, int32_t* index, void* out, uintptr_t stream,
           bool check);

 private:
  void release();             // frees what the constructor allocated; never throws
  void report(const char* where);  // throws when the host copy of the flag is up, after lowering both
  int k_, channels_, metric_, device_;
  float* codes_ = nullptr;
  uint8_t* codes_u8_ = nullptr;
  int* bad_ = nullptr;       // device flag, sticky until reported
  int* host_bad_ = nullptr;  // pinned host copy of bad_
  void* copied_ = nullptr;   // cudaEvent_t: the last unchecked copy of bad_ is done
  bool pending_ = false;     // an unchecked copy of bad_ has not been looked at yet
  std::mutex mutex_;         // the bindings release the GIL
};

// Counts every 8-bit colour key (channel 0 most significant) of the pixels of
// x (uint8, or float32 read through the on-grid test of pixdisc/metric.hpp)
// into table (int64, 2^(8*channels) entries, zeroed by the caller). Returns
// false when a float pixel is off the 1/255 grid (the table is then partial).
// Waits for the stream (the answer is a host bool).
bool histogram(const void* x, bool x_is_u8, int64_t outer, int channels, int64_t inner, int64_t* table,
               uintptr_t stream, int device);

// Writes count candidate images of S(x) for ranks [rank_start, rank_start+count)
// into out (count * image_size floats): base everywhere, then each ambiguous
// pixel j set to code members[offsets[j] + digit_j], with the digits decoded
// by pixdisc::mixed_radix_digit from strides (pixdisc::mixed_radix_strides).
// Does not wait: the caller's next kernel on the stream (the model) is ordered after it.
void enumerate_candidates(const float* base, int64_t image_size, const int64_t* positions, int64_t channel_stride,
                          const int64_t* offsets, const uint64_t* strides, const int32_t* members, int n_ambiguous,
                          const float* codes, int channels, uint64_t rank_start, int64_t count, float* out,
                          uintptr_t stream, int device);

}  // namespace pixdisc::cuda
