// Allocator for large scratch and result arrays that are written in full
// right after allocation (histogram partitions and outputs).
//
// Two costs dominate such arrays, not the writes themselves: value
// initialisation (std::vector zero-fills on resize) and one page fault per
// 4 KiB page (~25k faults for 100 MB). So elements are default-initialised
// (left unwritten), and blocks of at least kHugeThreshold bytes are aligned
// to 2 MiB and offered to transparent huge pages, where the kernel supports
// them; elsewhere this is a plain aligned allocation. NumPy does the same for
// its own arrays of 4 MiB and more. Measured on the 51M-pixel RGB histogram
// (2-core EPYC VM): 0.070 s with huge pages, 0.092 s without.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pixdisc {

template <typename T>
struct BulkAllocator {
  using value_type = T;
  static constexpr size_t kHugePage = size_t(2) << 20;
  static constexpr size_t kHugeThreshold = size_t(4) << 20;

  BulkAllocator() noexcept = default;
  template <typename U>
  BulkAllocator(const BulkAllocator<U>&) noexcept {}

  T* allocate(size_t n) {
    if (n > size_t(-1) / sizeof(T)) throw std::bad_array_new_length();
    const size_t bytes = n * sizeof(T);
    if (bytes < kHugeThreshold) {
      void* p = std::malloc(bytes == 0 ? 1 : bytes);
      if (!p) throw std::bad_alloc();
      return static_cast<T*>(p);
    }
    // aligned_alloc needs the size to be a multiple of the alignment.
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, rounded);
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, rounded, MADV_HUGEPAGE);  // advisory: failure only costs speed
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { std::free(p); }

  // Default-initialise (no zero fill) on resize(n); explicit values still construct.
  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }

  template <typename U>
  bool operator==(const BulkAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const BulkAllocator<U>&) const noexcept { return false; }
};

// A vector whose resize(n) leaves new elements unwritten: write all of them.
template <typename T>
using BulkVector = std::vector<T, BulkAllocator<T>>;

// Zero-filled count tables that are mostly never touched (dense colour
// tables): calloc hands back lazily zeroed pages, so a 64-128 MiB table costs
// page faults only where counts land, not a memset pass.
struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};
template <typename T>
using ZeroedArray = std::unique_ptr<T[], FreeDeleter>;

template <typename T>
ZeroedArray<T> zeroed_array(size_t n, const char* what) {
  auto* p = static_cast<T*>(std::calloc(n, sizeof(T)));
  if (!p)
    throw std::runtime_error("out of memory allocating a " + std::to_string(n * sizeof(T) >> 20) + " MiB " + what);
  return ZeroedArray<T>(p);
}

}  // namespace pixdisc
