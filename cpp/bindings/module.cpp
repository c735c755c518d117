// pybind11 bindings for pixdisc._core: converts arrays, checks shapes, releases
// the GIL and calls the kernels. No algorithm lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>
#include <vector>

#include "pixdisc/candidates.hpp"
#include "pixdisc/codebook.hpp"
#include "pixdisc/histogram.hpp"
#include "pixdisc/nearest.hpp"
#include "pixdisc/neighbourhood.hpp"
#include "pixdisc/parallel.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

std::string describe(const py::array& a) {
  std::ostringstream s;
  s << "dtype=" << py::str(a.dtype()).cast<std::string>() << " shape=(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s << (d ? ", " : "") << a.shape(d);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

// Pixel data is never silently converted: a wrong dtype or a strided view is
// an error here, and the Python layer decides when to copy.
// dtype equivalence, not identity: an unpickled array has its own (equal) dtype object.
template <typename T>
bool has_dtype(const py::array& a) {
  return py::isinstance<py::array_t<T>>(a);
}

template <typename T>
py::array_t<T, py::array::c_style> require(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<T, py::array::c_style>>(a)) {
    throw py::value_error(std::string(name) + " must be a C-contiguous " +
                          py::str(py::dtype::of<T>()).cast<std::string>() + " array, got " + describe(a));
  }
  return py::array_t<T, py::array::c_style>::ensure(a);
}

pixdisc::PixelLayout layout_of(const py::array& x, int64_t outer, int channels, int64_t inner) {
  if (outer < 0 || inner < 0 || channels < 1)
    throw py::value_error("invalid pixel layout (outer, channels, inner)");
  if (outer * channels * inner != static_cast<int64_t>(x.size()))
    throw py::value_error("pixel layout does not match the array size: " + describe(x));
  return {outer, channels, inner};
}

// Hands a std::vector to NumPy without a copy: the capsule owns the vector
// and frees it when the array is collected.
template <typename T, typename Alloc>
py::array_t<T> to_numpy(std::vector<T, Alloc>&& v, std::vector<py::ssize_t> shape) {
  using Vector = std::vector<T, Alloc>;
  auto* owned = new Vector(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<Vector*>(p); });
  return py::array_t<T>(shape, owned->data(), free_when_done);
}

pixdisc::Metric metric_of(int m) {
  if (m < 0 || m > 2) throw py::value_error("metric must be 0 (linf), 1 (l1) or 2 (l2)");
  return static_cast<pixdisc::Metric>(m);
}

py::tuple histogram_result(pixdisc::Histogram&& h) {
  const auto n = static_cast<py::ssize_t>(h.counts.size());
  const int c = h.channels;
  return py::make_tuple(to_numpy(std::move(h.values), {n, c}), to_numpy(std::move(h.counts), {n}), h.on_u8_grid);
}

void check_weighted_values(const py::array_t<float, py::array::c_style>& values,
                           const py::array_t<int64_t, py::array::c_style>& weights) {
  if (values.ndim() != 2 || weights.ndim() != 1 || values.shape(0) != weights.shape(0))
    throw py::value_error("values must be (n, C) and weights (n,)");
}

py::dict cluster_result(pixdisc::ClusterResult&& r, int channels) {
  const auto k = static_cast<py::ssize_t>(r.codes.size() / channels);
  const auto m = static_cast<py::ssize_t>(r.medoid_indices.size());
  return py::dict("codes"_a = to_numpy(std::move(r.codes), {k, channels}),
                  "medoid_indices"_a = to_numpy(std::move(r.medoid_indices), {m}), "cost"_a = r.cost,
                  "iterations"_a = r.iterations, "converged"_a = r.converged);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pixdisc native CPU kernels (private; use the pixdisc package)";

  m.def("set_num_threads", &pixdisc::set_num_threads, "n"_a);
  m.def("get_num_threads", &pixdisc::get_num_threads);
  m.def("build_info", [] {
    return py::dict("compiler"_a =
#if defined(__clang__)
                        std::string("clang ") + __clang_version__,
#elif defined(__GNUC__)
                        std::string("gcc ") + __VERSION__,
#else
                        std::string("unknown"),
#endif
                    "cxx_flags"_a = std::string(PIXDISC_CXX_FLAGS), "build_type"_a = std::string(PIXDISC_BUILD_TYPE));
  });

  py::class_<pixdisc::NearestIndex>(m, "NearestIndex")
      .def(py::init([](const py::array& codes, int metric) {
             auto c = require<float>(codes, "codes");
             if (c.ndim() != 2) throw py::value_error("codes must be a 2-D (k, C) array, got " + describe(codes));
             std::vector<float> copy(c.data(), c.data() + c.size());
             const int channels = static_cast<int>(c.shape(1));
             py::gil_scoped_release release;
             return new pixdisc::NearestIndex(std::move(copy), channels, metric_of(metric));
           }),
           "codes"_a, "metric"_a)
      .def_property_readonly("k", &pixdisc::NearestIndex::k)
      .def_property_readonly("channels", &pixdisc::NearestIndex::channels)
      .def_property_readonly("grid_cells_per_axis", &pixdisc::NearestIndex::grid_cells_per_axis)
      .def_property_readonly("mean_candidates", &pixdisc::NearestIndex::mean_candidates)
      .def(
          "assign",
          [](const pixdisc::NearestIndex& self, const py::array& x, int64_t outer, int channels, int64_t inner) {
            const auto layout = layout_of(x, outer, channels, inner);
            py::array_t<int32_t> index(layout.pixels());
            int32_t* out = index.mutable_data();
            if (has_dtype<uint8_t>(x)) {
              auto a = require<uint8_t>(x, "x");
              py::gil_scoped_release release;
              self.assign_u8(a.data(), layout, out);
            } else {
              auto a = require<float>(x, "x");
              py::gil_scoped_release release;
              self.assign(a.data(), layout, out);
            }
            return index;
          },
          "x"_a, "outer"_a, "channels"_a, "inner"_a,
          "Nearest code index of every pixel of x viewed as (outer, channels, inner); int32 (outer*inner,).")
      .def(
          "transform",
          [](const pixdisc::NearestIndex& self, const py::array& x, int64_t outer, int channels, int64_t inner,
             bool with_index) -> py::object {
            const auto layout = layout_of(x, outer, channels, inner);
            py::array_t<int32_t> index(with_index ? layout.pixels() : 0);
            int32_t* index_ptr = with_index ? index.mutable_data() : nullptr;
            py::array out;
            if (has_dtype<uint8_t>(x)) {
              auto a = require<uint8_t>(x, "x");
              py::array_t<uint8_t> o(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
              uint8_t* dst = o.mutable_data();
              {
                py::gil_scoped_release release;
                self.transform_u8(a.data(), layout, dst, index_ptr);
              }
              out = o;
            } else {
              auto a = require<float>(x, "x");
              py::array_t<float> o(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
              float* dst = o.mutable_data();
              {
                py::gil_scoped_release release;
                self.transform(a.data(), layout, dst, index_ptr);
              }
              out = o;
            }
            if (with_index) return py::make_tuple(out, index);
            return out;
          },
          "x"_a, "outer"_a, "channels"_a, "inner"_a, "with_index"_a = false,
          "Discretized copy of x (same dtype and shape); uint8 input gives codes rounded to k/255.");

  m.def(
      "histogram",
      [](const py::array& x, int64_t outer, int channels, int64_t inner) {
        const auto layout = layout_of(x, outer, channels, inner);
        pixdisc::Histogram h;
        if (has_dtype<uint8_t>(x)) {
          auto a = require<uint8_t>(x, "x");
          py::gil_scoped_release release;
          h = pixdisc::histogram_u8(a.data(), layout);
        } else {
          auto a = require<float>(x, "x");
          py::gil_scoped_release release;
          h = pixdisc::histogram_float(a.data(), layout);
        }
        return histogram_result(std::move(h));
      },
      "x"_a, "outer"_a, "channels"_a, "inner"_a,
      "Distinct pixel values (n, C) float32 in lexicographic order, their int64 counts, and whether the data "
      "was on the 1/255 grid.");

  m.def(
      "histogram_gray_u8",
      [](const py::array& x) {
        auto a = require<uint8_t>(x, "x");
        py::array_t<int64_t> counts(256);
        int64_t* out = counts.mutable_data();
        py::gil_scoped_release release;
        pixdisc::histogram_gray_u8(a.data(), static_cast<int64_t>(a.size()), out);
        return counts;
      },
      "x"_a, "Counts of each byte value: int64 (256,).");

  m.def(
      "density_codebook",
      [](const py::array& values, const py::array& weights, int k, double r, int metric, int kernel,
         double bandwidth) {
        auto v = require<float>(values, "values");
        auto w = require<int64_t>(weights, "weights");
        check_weighted_values(v, w);
        if (kernel < 0 || kernel > 2) throw py::value_error("kernel must be 0 (identity), 1 (box) or 2 (gaussian)");
        const int channels = static_cast<int>(v.shape(1));
        pixdisc::DensityResult res;
        {
          py::gil_scoped_release release;
          res = pixdisc::density_codebook(v.data(), w.data(), v.shape(0), channels, k, r, metric_of(metric),
                                          static_cast<pixdisc::Kernel>(kernel), bandwidth);
        }
        const auto n = static_cast<py::ssize_t>(res.code_indices.size());
        return py::dict("codes"_a = to_numpy(std::move(res.codes), {n, channels}),
                        "code_indices"_a = to_numpy(std::move(res.code_indices), {n}),
                        "densities"_a = to_numpy(std::move(res.densities), {n}),
                        "covered"_a = to_numpy(std::move(res.covered), {n}), "stopped_early"_a = res.stopped_early);
      },
      "values"_a, "weights"_a, "k"_a, "r"_a, "metric"_a, "kernel"_a, "bandwidth"_a);

  m.def(
      "kmedoids_codebook",
      [](const py::array& values, const py::array& weights, int k, int metric, uint64_t seed, int max_iter) {
        auto v = require<float>(values, "values");
        auto w = require<int64_t>(weights, "weights");
        check_weighted_values(v, w);
        const int channels = static_cast<int>(v.shape(1));
        pixdisc::ClusterResult res;
        {
          py::gil_scoped_release release;
          res = pixdisc::kmedoids_codebook(v.data(), w.data(), v.shape(0), channels, k, metric_of(metric), seed,
                                           max_iter);
        }
        return cluster_result(std::move(res), channels);
      },
      "values"_a, "weights"_a, "k"_a, "metric"_a, "seed"_a, "max_iter"_a);

  m.def(
      "kmeans_codebook",
      [](const py::array& values, const py::array& weights, int k, uint64_t seed, int max_iter, double tol) {
        auto v = require<float>(values, "values");
        auto w = require<int64_t>(weights, "weights");
        check_weighted_values(v, w);
        const int channels = static_cast<int>(v.shape(1));
        pixdisc::ClusterResult res;
        {
          py::gil_scoped_release release;
          res = pixdisc::kmeans_codebook(v.data(), w.data(), v.shape(0), channels, k, seed, max_iter, tol);
        }
        return cluster_result(std::move(res), channels);
      },
      "values"_a, "weights"_a, "k"_a, "seed"_a, "max_iter"_a, "tol"_a);
  m.def(
      "candidate_sets",
      [](const pixdisc::NearestIndex& index, const py::array& x, int64_t outer, int channels, int64_t inner,
         double eps, int rule, bool counts_only) {
        const auto layout = layout_of(x, outer, channels, inner);
        auto a = require<float>(x, "x");
        if (rule < 0 || rule > 2) throw py::value_error("rule must be 0 (sound), 1 (exact) or 2 (tight)");
        pixdisc::CandidateSets sets;
        {
          py::gil_scoped_release release;
          sets = pixdisc::candidate_sets(index, a.data(), layout, eps, static_cast<pixdisc::CandidateRule>(rule),
                                         counts_only);
        }
        const auto n = static_cast<py::ssize_t>(sets.nearest.size());
        const auto m = static_cast<py::ssize_t>(sets.members.size());
        return py::make_tuple(to_numpy(std::move(sets.nearest), {n}), to_numpy(std::move(sets.offsets), {n + 1}),
                              to_numpy(std::move(sets.members), {m}));
      },
      "index"_a, "x"_a, "outer"_a, "channels"_a, "inner"_a, "eps"_a, "rule"_a, "counts_only"_a = false,
      "Per-pixel candidate sets (nearest code first) as CSR: (nearest, offsets, members).");

  m.def(
      "enumerate_candidates",
      [](const py::array& base, const py::array& positions, int64_t channel_stride, const py::array& offsets,
         const py::array& members, const py::array& codes, uint64_t rank_start, int64_t count) {
        auto b = require<float>(base, "base");
        auto pos = require<int64_t>(positions, "positions");
        auto off = require<int64_t>(offsets, "offsets");
        auto mem = require<int32_t>(members, "members");
        auto c = require<float>(codes, "codes");
        if (c.ndim() != 2) throw py::value_error("codes must be (k, C)");
        const int64_t n = static_cast<int64_t>(pos.size());
        if (static_cast<int64_t>(off.size()) != n + 1) throw py::value_error("offsets must have one more entry than positions");
        if (count < 0) throw py::value_error("count must be >= 0");
        const int64_t image_size = static_cast<int64_t>(b.size());
        const int channels = static_cast<int>(c.shape(1));
        for (int64_t j = 0; j < n; ++j) {
          if (pos.data()[j] < 0 || pos.data()[j] + (channels - 1) * channel_stride >= image_size)
            throw py::value_error("a pixel position lies outside the image");
          if (off.data()[j] > off.data()[j + 1]) throw py::value_error("offsets must be non-decreasing");
        }
        if (n > 0 && (off.data()[0] < 0 || off.data()[n] > static_cast<int64_t>(mem.size())))
          throw py::value_error("offsets point outside members");
        for (py::ssize_t e = 0; e < mem.size(); ++e)
          if (mem.data()[e] < 0 || mem.data()[e] >= c.shape(0)) throw py::value_error("a member is not a code index");
        py::array_t<float> out({static_cast<py::ssize_t>(count), static_cast<py::ssize_t>(image_size)});
        float* dst = out.mutable_data();
        py::gil_scoped_release release;
        pixdisc::enumerate_candidates(b.data(), image_size, pos.data(), channel_stride, off.data(), mem.data(),
                                      static_cast<int>(n), c.data(), channels, rank_start, count, dst);
        return out;
      },
      "base"_a, "positions"_a, "channel_stride"_a, "offsets"_a, "members"_a, "codes"_a, "rank_start"_a, "count"_a,
      "A batch of candidate images z in S(x) for ranks [rank_start, rank_start + count).");

  m.def(
      "mixed_radix_strides",
      [](const py::array& offsets) {
        auto off = require<int64_t>(offsets, "offsets");
        if (off.ndim() != 1 || off.shape(0) < 1)
          throw py::value_error("offsets must be int64 (n + 1,), got " + describe(offsets));
        const auto n = off.shape(0) - 1;
        py::array_t<uint64_t> strides(n);
        uint64_t* dst = strides.mutable_data();
        uint64_t total = 0;
        {
          py::gil_scoped_release release;
          total = pixdisc::mixed_radix_strides(off.data(), static_cast<int>(n), dst);
        }
        return py::make_tuple(strides, total);
      },
      "offsets"_a,
      "Place values of the mixed radix whose radices are the set sizes diff(offsets) (least significant "
      "first), and |S| = their product: (uint64 (n,), int). Raises when |S| exceeds 2^64.");

  m.def(
      "mixed_radix_digits",
      [](const py::array& offsets, uint64_t rank) {
        auto off = require<int64_t>(offsets, "offsets");
        if (off.ndim() != 1 || off.shape(0) < 1)
          throw py::value_error("offsets must be int64 (n + 1,), got " + describe(offsets));
        const auto n = off.shape(0) - 1;
        std::vector<uint64_t> strides(n);
        const uint64_t total = pixdisc::mixed_radix_strides(off.data(), static_cast<int>(n), strides.data());
        if (rank >= total) throw py::value_error("rank " + std::to_string(rank) + " is not below |S| = " + std::to_string(total));
        py::array_t<int32_t> digits(n);
        int32_t* dst = digits.mutable_data();
        for (py::ssize_t j = 0; j < n; ++j)
          dst[j] = pixdisc::mixed_radix_digit(rank, strides[j], static_cast<int32_t>(off.data()[j + 1] - off.data()[j]));
        return digits;
      },
      "offsets"_a, "rank"_a,
      "Digits of rank in the mixed radix of the set sizes diff(offsets): int32 (n,), the same decoding the "
      "enumerators use.");

  m.def(
      "summed_area_table",
      [](const py::array& table) {
        auto t = require<int64_t>(table, "table");
        int channels = 0;
        if (t.ndim() == 1 && t.shape(0) == pixdisc::kLevels) channels = 1;
        if (t.ndim() == 3 && t.shape(0) == pixdisc::kLevels && t.shape(1) == pixdisc::kLevels &&
            t.shape(2) == pixdisc::kLevels)
          channels = 3;
        if (!channels) throw py::value_error("table must be int64 of shape (256,) or (256, 256, 256), got " + describe(table));
        int64_t* data = t.mutable_data();
        py::gil_scoped_release release;
        pixdisc::summed_area_table(data, channels);
      },
      "table"_a, "In place: inclusive prefix sums along every axis of a (256,) or (256, 256, 256) int64 count table.");

  m.def(
      "neighbourhood_counts",
      [](const py::array& points, const py::object& weights, const py::array& queries, int radius) {
        auto p = require<uint8_t>(points, "points");
        auto q = require<uint8_t>(queries, "queries");
        if (p.ndim() != 2 || q.ndim() != 2 || p.shape(1) != q.shape(1) || (p.shape(1) != 1 && p.shape(1) != 3))
          throw py::value_error("points and queries must be uint8 (n, C) with the same C in {1, 3}, got points " +
                                describe(points) + " and queries " + describe(queries));
        if (radius < 0) throw py::value_error("radius must be >= 0 levels, got " + std::to_string(radius));
        py::array_t<int64_t, py::array::c_style> w;
        const int64_t* weight_ptr = nullptr;
        if (!weights.is_none()) {
          w = require<int64_t>(weights.cast<py::array>(), "weights");
          if (w.ndim() != 1 || w.shape(0) != p.shape(0))
            throw py::value_error("weights must be int64 (n_points,), got " + describe(w));
          weight_ptr = w.data();
        }
        const int channels = static_cast<int>(p.shape(1));
        py::array_t<int64_t> out(q.shape(0));
        int64_t* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          pixdisc::neighbourhood_counts(p.data(), weight_ptr, p.shape(0), channels, q.data(), q.shape(0), radius, dst);
        }
        return out;
      },
      "points"_a, "weights"_a, "queries"_a, "radius"_a,
      "Weighted number of points within radius levels (l_inf) of each query colour: int64 (n_queries,).");
}
