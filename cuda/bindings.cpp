// pybind11 bindings for pixdisc._cuda: the same names and arguments as
// pixdisc._core, plus the outputs (CUDA arrays the caller allocates: this
// module is not built against torch) and the stream to run on. Every array is
// read through __cuda_array_interface__ and checked for dtype, shape,
// contiguity and device (device_array.hpp) before any kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "device_array.hpp"
#include "launch.hpp"
#include "neighbourhood.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using pixdisc::cuda::DeviceNearestIndex;
using pixdisc::cuda::detail::data_of;
using pixdisc::cuda::detail::DeviceArray;
using pixdisc::cuda::detail::read_array;
using pixdisc::cuda::detail::require;

namespace {

constexpr int64_t kLevels = 256;

void check_layout(const DeviceArray& x, int64_t outer, int channels, int64_t inner) {
  if (outer < 0 || inner < 0 || channels < 1) throw py::value_error("invalid pixel layout (outer, channels, inner)");
  if (outer * channels * inner != x.size())
    throw py::value_error("pixel layout does not match the array size: " + x.describe());
}

// uint8 or float32 pixels on `device`.
DeviceArray require_pixels(const py::handle& x, int device) {
  DeviceArray a = read_array(x, "x");
  if (pixdisc::cuda::detail::same_type(a.typestr, "|u1")) return require<uint8_t>(x, "x", device);
  return require<float>(x, "x", device);
}

bool is_u8(const DeviceArray& a) { return pixdisc::cuda::detail::same_type(a.typestr, "|u1"); }

// Channels of a dense 8-bit count table from its size (256 or 256^3 entries).
int table_channels(const DeviceArray& t, const char* name) {
  if (t.size() == kLevels) return 1;
  if (t.size() == kLevels * kLevels * kLevels) return 3;
  throw py::value_error(std::string(name) + " must hold 256 or 256^3 int64 counts, got " + t.describe());
}

void run_nearest(DeviceNearestIndex& self, const py::handle& x, int64_t outer, int channels, int64_t inner,
                 const py::handle& out, const py::handle& index, uintptr_t stream, bool check) {
  const int device = self.device();
  const DeviceArray a = require_pixels(x, device);
  check_layout(a, outer, channels, inner);
  if (channels != self.channels())
    throw py::value_error("input has " + std::to_string(channels) + " channels but the codebook has " +
                          std::to_string(self.channels()));
  void* out_ptr = nullptr;
  if (!out.is_none()) {
    const DeviceArray o = is_u8(a) ? require<uint8_t>(out, "out", device) : require<float>(out, "out", device);
    if (o.size() != a.size()) throw py::value_error("out must have x's size, got " + o.describe());
    out_ptr = o.data;
  }
  int32_t* index_ptr = nullptr;
  if (!index.is_none()) {
    const DeviceArray i = require<int32_t>(index, "index", device);
    if (i.size() != outer * inner) throw py::value_error("index must hold outer*inner int32, got " + i.describe());
    index_ptr = data_of<int32_t>(i);
  }
  py::gil_scoped_release release;
  self.run(a.data, is_u8(a), outer, inner, index_ptr, out_ptr, stream, check);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pixdisc CUDA kernels (private; pixdisc._native is the way in)";
  m.def("device_count", &pixdisc::cuda::device_count);
  m.def("build_info", [] {
    return py::dict("runtime"_a = pixdisc::cuda::runtime_version(), "architectures"_a = PIXDISC_CUDA_ARCHS);
  });

  py::class_<DeviceNearestIndex>(m, "NearestIndex")
      .def(py::init([](const py::array& codes, int metric, int device) {
             if (!py::isinstance<py::array_t<float, py::array::c_style>>(codes) || codes.ndim() != 2)
               throw py::value_error("codes must be a C-contiguous float32 (k, C) host array");
             if (metric < 0 || metric > 2) throw py::value_error("metric must be 0 (linf), 1 (l1) or 2 (l2)");
             auto c = py::array_t<float, py::array::c_style>::ensure(codes);
             return new DeviceNearestIndex(c.data(), static_cast<int>(c.shape(0)), static_cast<int>(c.shape(1)),
                                           metric, device);
           }),
           "codes"_a, "metric"_a, "device"_a, "Device copies of the (host) codes on CUDA device `device`.")
      .def_property_readonly("k", &DeviceNearestIndex::k)
      .def_property_readonly("channels", &DeviceNearestIndex::channels)
      .def_property_readonly("device", &DeviceNearestIndex::device)
      .def(
          "assign",
          [](DeviceNearestIndex& self, const py::handle& x, int64_t outer, int channels, int64_t inner,
             const py::handle& index, uintptr_t stream, bool check) {
            run_nearest(self, x, outer, channels, inner, py::none(), index, stream, check);
          },
          "x"_a, "outer"_a, "channels"_a, "inner"_a, "index"_a, "stream"_a, "check"_a = true,
          "Writes the nearest code index of every pixel into index (int32, outer*inner).")
      .def(
          "transform",
          [](DeviceNearestIndex& self, const py::handle& x, int64_t outer, int channels, int64_t inner,
             const py::handle& out, const py::handle& index, uintptr_t stream, bool check) {
            run_nearest(self, x, outer, channels, inner, out, index, stream, check);
          },
          "x"_a, "outer"_a, "channels"_a, "inner"_a, "out"_a, "index"_a = py::none(), "stream"_a = 0,
          "check"_a = true, "Writes the discretized x into out (x's dtype and size) and, unless None, index.");

  m.def(
      "histogram",
      [](const py::handle& x, int64_t outer, int channels, int64_t inner, const py::handle& table, uintptr_t stream) {
        const DeviceArray t0 = read_array(table, "table");
        const DeviceArray t = require<int64_t>(table, "table", t0.device);
        const DeviceArray a = require_pixels(x, t.device);
        check_layout(a, outer, channels, inner);
        if (channels > 3) throw py::value_error("the CUDA histogram takes 1 to 3 channels");
        if (t.size() != (int64_t(1) << (8 * channels)))
          throw py::value_error("table must hold 2^(8*channels) int64 counts, got " + t.describe());
        py::gil_scoped_release release;
        return pixdisc::cuda::histogram(a.data, is_u8(a), outer, channels, inner, data_of<int64_t>(t), stream,
                                        t.device);
      },
      "x"_a, "outer"_a, "channels"_a, "inner"_a, "table"_a, "stream"_a,
      "Adds the count of every 8-bit colour key of x into the zeroed table; False when float x is off the 1/255 grid.");

  m.def(
      "enumerate_candidates",
      [](const py::handle& base, const py::handle& positions, int64_t channel_stride, const py::handle& offsets,
         const py::handle& members, const py::handle& codes, uint64_t rank_start, int64_t count,
         const py::handle& strides, const py::handle& out, uintptr_t stream) {
        const DeviceArray b0 = read_array(base, "base");
        const int device = b0.device;
        const DeviceArray b = require<float>(base, "base", device, 1);
        const DeviceArray pos = require<int64_t>(positions, "positions", device, 1);
        const DeviceArray off = require<int64_t>(offsets, "offsets", device, 1);
        const DeviceArray str = require<int64_t>(strides, "strides", device, 1);  // uint64 bits in int64
        const DeviceArray mem = require<int32_t>(members, "members", device, 1);
        const DeviceArray c = require<float>(codes, "codes", device, 2);
        const DeviceArray o = require<float>(out, "out", device, 2);
        const int64_t n = pos.size();
        if (off.size() != n + 1 || str.size() != n)
          throw py::value_error("offsets must have n + 1 entries and strides n for n positions, got offsets " +
                                off.describe() + ", strides " + str.describe() + ", positions " + pos.describe());
        if (count < 0) throw py::value_error("count must be >= 0");
        if (o.shape[0] != count || o.shape[1] != b.size())
          throw py::value_error("out must be float32 (count, image_size), got " + o.describe());
        if (count == 0 || b.size() == 0) return;  // nothing to write (and an empty base has no device)
        py::gil_scoped_release release;
        pixdisc::cuda::enumerate_candidates(data_of<float>(b), b.size(), data_of<int64_t>(pos), channel_stride,
                                            data_of<int64_t>(off), data_of<uint64_t>(str), data_of<int32_t>(mem),
                                            static_cast<int>(n), data_of<float>(c), static_cast<int>(c.shape[1]),
                                            rank_start, count, data_of<float>(o), stream, device);
      },
      "base"_a, "positions"_a, "channel_stride"_a, "offsets"_a, "members"_a, "codes"_a, "rank_start"_a, "count"_a,
      "strides"_a, "out"_a, "stream"_a,
      "Writes candidate images for ranks [rank_start, rank_start + count) into out. The values (positions inside "
      "the image, members code indices, the rank range) are the caller's to check: pixdisc._native checks them "
      "on the host copies with pixdisc._core before uploading.");

  m.def(
      "summed_area_table",
      [](const py::handle& table, uintptr_t stream) {
        const DeviceArray t0 = read_array(table, "table");
        const DeviceArray t = require<int64_t>(table, "table", t0.device);
        const int channels = table_channels(t, "table");
        py::gil_scoped_release release;
        pixdisc::cuda::summed_area_table(data_of<int64_t>(t), channels, stream, t.device);
      },
      "table"_a, "stream"_a, "In place: the summed-area table of a (256,) or (256^3,) int64 count table.");

  m.def(
      "neighbourhood_query",
      [](const py::handle& sat, const py::handle& keys, int radius, const py::handle& out, uintptr_t stream) {
        const DeviceArray s0 = read_array(sat, "sat");
        const DeviceArray s = require<int64_t>(sat, "sat", s0.device);
        const DeviceArray k = require<int64_t>(keys, "keys", s.device, 1);
        const DeviceArray o = require<int64_t>(out, "out", s.device, 1);
        if (o.size() != k.size()) throw py::value_error("out must match keys, got " + o.describe());
        if (radius < 0) throw py::value_error("radius must be >= 0 levels, got " + std::to_string(radius));
        const int channels = table_channels(s, "sat");
        py::gil_scoped_release release;
        pixdisc::cuda::neighbourhood_query(data_of<int64_t>(s), channels, data_of<int64_t>(k), k.size(), radius,
                                           data_of<int64_t>(o), stream, s.device);
      },
      "sat"_a, "keys"_a, "radius"_a, "out"_a, "stream"_a,
      "out[q] = count of the summed-area table within radius levels (l_inf) of colour key keys[q].");
}
