// pybind11 bindings for pixdisc._cuda: device pointers arrive as integers
// (torch's data_ptr()); the tensors stay owned by Python for the whole call.
#include <pybind11/pybind11.h>

#include "launch.hpp"
#include "neighbourhood.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pixdisc CUDA kernels (private; used through pixdisc with CUDA torch tensors)";
  m.def("device_count", &pixdisc::cuda::device_count);
  m.def("build_info", [] {
    return py::dict("runtime"_a = pixdisc::cuda::runtime_version(), "architectures"_a = PIXDISC_CUDA_ARCHS);
  });
  m.def(
      "nearest",
      [](uintptr_t x, bool x_is_u8, int64_t outer, int channels, int64_t inner, uintptr_t codes,
         uintptr_t value_table, int k, int metric, uintptr_t index, uintptr_t out, uintptr_t stream, int device) {
        py::gil_scoped_release release;
        pixdisc::cuda::nearest(reinterpret_cast<const void*>(x), x_is_u8, outer, channels, inner,
                               reinterpret_cast<const float*>(codes), reinterpret_cast<const void*>(value_table), k,
                               metric, reinterpret_cast<int32_t*>(index), reinterpret_cast<void*>(out), stream,
                               device);
      },
      "x"_a, "x_is_u8"_a, "outer"_a, "channels"_a, "inner"_a, "codes"_a, "value_table"_a, "k"_a, "metric"_a,
      "index"_a, "out"_a, "stream"_a, "device"_a);
  m.def(
      "histogram_u8",
      [](uintptr_t x, int64_t outer, int channels, int64_t inner, uintptr_t table, uintptr_t stream, int device) {
        py::gil_scoped_release release;
        pixdisc::cuda::histogram_u8(reinterpret_cast<const uint8_t*>(x), outer, channels, inner,
                                    reinterpret_cast<int64_t*>(table), stream, device);
      },
      "x"_a, "outer"_a, "channels"_a, "inner"_a, "table"_a, "stream"_a, "device"_a);
  m.def(
      "enumerate_candidates",
      [](uintptr_t base, int64_t image_size, uintptr_t positions, int64_t channel_stride, uintptr_t offsets,
         uintptr_t strides, uintptr_t members, int n_ambiguous, uintptr_t codes, int channels, uint64_t rank_start,
         int64_t count, uintptr_t out, uintptr_t stream, int device) {
        py::gil_scoped_release release;
        pixdisc::cuda::enumerate_candidates(
            reinterpret_cast<const float*>(base), image_size, reinterpret_cast<const int64_t*>(positions),
            channel_stride, reinterpret_cast<const int64_t*>(offsets), reinterpret_cast<const uint64_t*>(strides),
            reinterpret_cast<const int32_t*>(members), n_ambiguous, reinterpret_cast<const float*>(codes), channels,
            rank_start, count, reinterpret_cast<float*>(out), stream, device);
      },
      "base"_a, "image_size"_a, "positions"_a, "channel_stride"_a, "offsets"_a, "strides"_a, "members"_a,
      "n_ambiguous"_a, "codes"_a, "channels"_a, "rank_start"_a, "count"_a, "out"_a, "stream"_a, "device"_a);
  m.def(
      "summed_area_table",
      [](uintptr_t table, int channels, uintptr_t stream, int device) {
        py::gil_scoped_release release;
        pixdisc::cuda::summed_area_table(reinterpret_cast<int64_t*>(table), channels, stream, device);
      },
      "table"_a, "channels"_a, "stream"_a, "device"_a);
  m.def(
      "neighbourhood_query",
      [](uintptr_t sat, int channels, uintptr_t keys, int64_t n_queries, int radius, uintptr_t out, uintptr_t stream,
         int device) {
        py::gil_scoped_release release;
        pixdisc::cuda::neighbourhood_query(reinterpret_cast<const int64_t*>(sat), channels,
                                           reinterpret_cast<const int64_t*>(keys), n_queries, radius,
                                           reinterpret_cast<int64_t*>(out), stream, device);
      },
      "sat"_a, "channels"_a, "keys"_a, "n_queries"_a, "radius"_a, "out"_a, "stream"_a, "device"_a);
}
