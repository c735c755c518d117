// Arrays crossing into pixdisc._cuda: objects exposing __cuda_array_interface__
// (torch CUDA tensors, CuPy, Numba), read and checked the way the CPU bindings
// check NumPy arrays. Python keeps ownership of the memory for the whole call.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "launch.hpp"

namespace pixdisc::cuda::detail {

namespace py = pybind11;

template <typename T>
struct TypeStr;
template <>
struct TypeStr<float> { static constexpr const char* value = "<f4"; static constexpr const char* name = "float32"; };
template <>
struct TypeStr<uint8_t> { static constexpr const char* value = "|u1"; static constexpr const char* name = "uint8"; };
template <>
struct TypeStr<int32_t> { static constexpr const char* value = "<i4"; static constexpr const char* name = "int32"; };
template <>
struct TypeStr<int64_t> { static constexpr const char* value = "<i8"; static constexpr const char* name = "int64"; };

// One checked CUDA array: its data pointer, shape, element type and device.
struct DeviceArray {
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::string typestr;
  int device = -1;  // -1 for an empty array (it has no memory to ask about)

  int64_t size() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  int ndim() const { return static_cast<int>(shape.size()); }
  std::string describe() const {
    std::ostringstream s;
    s << "typestr=" << typestr << " shape=(";
    for (size_t d = 0; d < shape.size(); ++d) s << (d ? ", " : "") << shape[d];
    s << (shape.size() == 1 ? ",)" : ")");
    return s.str();
  }
};

// Same typestr up to the byte-order mark ('<', '=' and '|' all mean native here).
inline bool same_type(const std::string& a, const std::string& b) {
  return a.size() == 3 && b.size() == 3 && a.substr(1) == b.substr(1) && a[0] != '>' && b[0] != '>';
}

inline DeviceArray read_array(const py::handle& obj, const std::string& name) {
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    throw py::type_error(name + " must be a CUDA array (an object with __cuda_array_interface__, such as a torch "
                                "CUDA tensor), got " + py::str(py::type::of(obj)).cast<std::string>());
  const py::dict cai = obj.attr("__cuda_array_interface__");
  DeviceArray a;
  for (const auto& s : cai["shape"].cast<py::tuple>()) a.shape.push_back(s.cast<int64_t>());
  a.typestr = cai["typestr"].cast<std::string>();
  a.data = reinterpret_cast<void*>(cai["data"].cast<py::tuple>()[0].cast<uintptr_t>());
  if (cai.contains("mask") && !cai["mask"].is_none()) throw py::value_error(name + " must not be a masked array");
  if (cai.contains("strides") && !cai["strides"].is_none() && a.size() > 0) {
    // C-contiguous strides may still be spelled out; axes of extent 1 have any stride.
    const auto strides = cai["strides"].cast<py::tuple>();
    int64_t expect = static_cast<int64_t>(std::stoi(a.typestr.substr(2)));
    for (int d = a.ndim() - 1; d >= 0; --d) {
      if (a.shape[d] != 1 && strides[d].cast<int64_t>() != expect)
        throw py::value_error(name + " must be C-contiguous, got " + a.describe() + " with strides " +
                              py::str(strides).cast<std::string>());
      expect *= a.shape[d];
    }
  }
  if (a.size() > 0) a.device = pointer_device(a.data, name.c_str());
  return a;
}

// The array `name` as T on `device`; a wrong type, device or (ndim >= 0) rank
// is a ValueError that says what came instead.
template <typename T>
DeviceArray require(const py::handle& obj, const std::string& name, int device, int ndim = -1) {
  DeviceArray a = read_array(obj, name);
  if (!same_type(a.typestr, TypeStr<T>::value))
    throw py::value_error(name + " must be a C-contiguous " + TypeStr<T>::name + " CUDA array, got " + a.describe());
  if (ndim >= 0 && a.ndim() != ndim)
    throw py::value_error(name + " must have " + std::to_string(ndim) + " dimension(s), got " + a.describe());
  if (a.device >= 0 && a.device != device)
    throw py::value_error(name + " is on cuda:" + std::to_string(a.device) + " but the call runs on cuda:" +
                          std::to_string(device));
  return a;
}

template <typename T>
T* data_of(const DeviceArray& a) {
  return static_cast<T*>(a.data);
}

}  // namespace pixdisc::cuda::detail
