"""pixdisc._native, the one door to the kernels: the import graph, its host/CUDA checks, rank decoding, enumeration."""

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest

import pixdisc
from pixdisc import _native

PACKAGE = Path(pixdisc.__file__).resolve().parent
NATIVE_MODULES = {"_core", "_cuda"}


def _imported_modules(tree: ast.AST, package_parts):
    """Every module a file imports, as absolute dotted names (relative imports resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield module
            for alias in node.names:  # `from pixdisc import _core` imports the submodule
                yield f"{module}.{alias.name}"


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        # Relative imports start from the package that holds the file.
        holder = parts if path.name == "__init__.py" else parts[:-1]
        yield path, ".".join(parts), holder


def test_only_native_imports_the_compiled_modules():
    offenders = []
    for path, module, holder in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for imported in _imported_modules(tree, holder):
            if imported.split(".")[-1] in NATIVE_MODULES and imported.startswith("pixdisc") and module != "pixdisc._native":
                offenders.append(f"{module} imports {imported}")
    assert not offenders, offenders


def test_import_scan_sees_relative_and_absolute_imports():
    # The scan must catch every spelling, or the test above proves nothing.
    for source, holder in [("from . import _core", ["pixdisc"]), ("from .._cuda import x", ["pixdisc", "sub"]),
                           ("import pixdisc._core", ["pixdisc"]), ("from pixdisc import _cuda", ["pixdisc"])]:
        found = list(_imported_modules(ast.parse(source), holder))
        assert any(m.split(".")[-1] in NATIVE_MODULES for m in found), source


def test_no_module_reads_data_pointers():
    offenders = [str(path.relative_to(PACKAGE)) for path, _, _ in _sources() if "data_ptr" in path.read_text()]
    assert not offenders, offenders


# --------------------------------------------------------------------------
# Host checks: clear errors, no silent conversion


def _index(channels=1, k=4):
    codes = (np.arange(k * channels, dtype=np.float32).reshape(k, channels) / np.float32(k * channels)).astype(np.float32)
    return _native.NearestIndex(codes, 0), codes


def test_wrong_dtype_names_what_came():
    index, _ = _index()
    with pytest.raises(ValueError, match="float32.*float64"):
        index.assign(np.zeros(4, np.float64), 4, 1, 1)
    with pytest.raises(ValueError, match="int64.*int32"):
        _native.summed_area_table(np.zeros(256, np.int32))
    with pytest.raises(ValueError, match="uint8"):
        _native.histogram_gray_u8(np.zeros(4, np.float32))


def test_wrong_shape_is_an_error():
    index, _ = _index()
    with pytest.raises(ValueError, match="does not match"):
        index.assign(np.zeros(4, np.float32), 5, 1, 1)
    with pytest.raises(ValueError, match="256"):
        _native.summed_area_table(np.zeros(100, np.int64))
    with pytest.raises(ValueError, match="offsets"):
        _native.mixed_radix_strides(np.zeros((2, 2), np.int64))


def test_non_contiguous_is_an_error_not_a_copy():
    index, _ = _index()
    strided = np.zeros(8, np.float32)[::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        index.assign(strided, 4, 1, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.histogram(strided, 4, 1, 1)


def test_torch_cpu_tensors_go_in_without_conversion():
    torch = pytest.importorskip("torch")
    index, codes = _index(channels=3, k=5)
    x = np.random.default_rng(0).random((6, 3), dtype=np.float32)
    expect = index.assign(x.reshape(-1), 6, 3, 1)
    np.testing.assert_array_equal(index.assign(torch.from_numpy(x).reshape(-1), 6, 3, 1), expect)
    np.testing.assert_array_equal(index.assign(torch.from_numpy(x).reshape(-1).requires_grad_(), 6, 3, 1), expect)
    with pytest.raises(ValueError, match="C-contiguous"):
        index.assign(torch.from_numpy(np.zeros(36, np.float32))[::2], 6, 3, 1)
    with pytest.raises(ValueError, match="float32.*float64"):
        index.assign(torch.from_numpy(x.astype(np.float64)).reshape(-1), 6, 3, 1)


class _FakeCudaArray:
    """Claims to be CUDA memory; the door must route it to CUDA or refuse it, never hand it to a CPU kernel."""

    shape = (4,)
    dtype = "float32"

    @property
    def __cuda_array_interface__(self):
        return {"shape": (4,), "typestr": "<f4", "data": (0, False), "version": 3}


def test_cuda_arrays_are_refused_by_host_only_kernels():
    fake = _FakeCudaArray()
    assert _native.is_cuda(fake)
    assert not _native.is_cuda(np.zeros(3))
    for call in (lambda: _native.histogram_gray_u8(fake),
                 lambda: _native.enumerate_candidates(fake, np.zeros(0, np.int64), 1, np.zeros(1, np.int64),
                                                      np.zeros(0, np.int32), np.zeros((1, 1), np.float32), 0, 1),
                 lambda: _native.neighbourhood_counts(fake, None, fake, 1)):
        with pytest.raises(ValueError, match="host array"):
            call()


def test_host_and_cuda_arrays_do_not_mix():
    with pytest.raises(ValueError, match="x is a CUDA array but codes is a host array"):
        _native._device_of(("x", _FakeCudaArray()), ("codes", np.zeros(3, np.float32)))
    assert _native._device_of(("x", np.zeros(3)), ("y", None)) is None


@pytest.mark.skipif(pixdisc.cuda_available(), reason="checks the message on machines without CUDA")
def test_cuda_request_without_cuda_says_why():
    pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="CUDA not available"):
        _native.require_cuda()
    with pytest.raises(RuntimeError, match="CUDA not available"):
        _native.CandidateEnumerator(np.zeros(2, np.float32), np.zeros(0, np.int64), 2, np.zeros(1, np.int64),
                                    np.zeros(0, np.int32), np.zeros((1, 1), np.float32), device="cuda")


def test_build_facts_and_threads_keep_working():
    info = pixdisc.build_info()
    assert {"compiler", "cuda_module", "cuda_available", "num_threads"} <= set(info)
    assert info["cuda_available"] == pixdisc.cuda_available() == _native.cuda_available()
    previous = pixdisc.get_num_threads()
    pixdisc.set_num_threads(1)
    try:
        assert _native.get_num_threads() == 1
    finally:
        pixdisc.set_num_threads(previous)


def test_nearest_index_is_lazy_and_pickles_without_native_state():
    index, codes = _index(k=6)
    assert index._cpu is None  # nothing built until a host call
    x = np.linspace(0, 1, 11, dtype=np.float32)
    expect = index.assign(x, 11, 1, 1)
    clone = pickle.loads(pickle.dumps(index))
    assert clone._cpu is None and clone._devices == {}
    np.testing.assert_array_equal(clone.assign(x, 11, 1, 1), expect)
    out, got = index.transform(x, 11, 1, 1, with_index=True)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(out, codes[expect, 0])


# --------------------------------------------------------------------------
# Rank decoding: the one shared function, against a NumPy reference


def _reference_digits(sizes, rank):
    digits = []
    for size in sizes:
        digits.append(rank % size)
        rank //= size
    return digits


@pytest.mark.parametrize("sizes", [[], [1], [3], [2, 3, 2, 4], [7, 1, 5, 255, 2]])
def test_mixed_radix_strides_and_digits(sizes):
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    strides, total = _native.mixed_radix_strides(offsets)
    assert strides.dtype == np.uint64 and total == int(np.prod(sizes, dtype=np.int64))
    np.testing.assert_array_equal(strides, np.concatenate([[1], np.cumprod(sizes)[:-1]]).astype(np.uint64)[: len(sizes)])
    for rank in sorted({r for r in (0, 1, total // 2, total - 1) if r < total}):
        assert list(_native.mixed_radix_digits(offsets, rank)) == _reference_digits(sizes, rank)


def test_mixed_radix_limits():
    offsets = np.concatenate([[0], np.cumsum([2] * 64)]).astype(np.int64)  # |S| = 2^64
    with pytest.raises(ValueError, match="2\\^64"):
        _native.mixed_radix_strides(offsets)
    big = np.concatenate([[0], np.cumsum([2] * 63)]).astype(np.int64)
    assert list(_native.mixed_radix_digits(big, 2**63 - 1)) == [1] * 63
    with pytest.raises(ValueError, match="not below"):
        _native.mixed_radix_digits(np.array([0, 2, 5], np.int64), 6)
    with pytest.raises(ValueError, match="at least one code"):
        _native.mixed_radix_strides(np.array([0, 2, 2], np.int64))


def test_enumerator_batches_and_digits_agree():
    codes = np.array([[0.0], [0.3], [0.6], [1.0]], np.float32)
    base = np.full(12, 0.5, np.float32)
    positions = np.array([1, 4, 7, 10], np.int64)
    sizes = [2, 3, 2, 4]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    members = np.array([0, 1, 0, 1, 2, 2, 3, 0, 1, 2, 3, 1][: offsets[-1]], np.int32)
    enumerator = _native.CandidateEnumerator(base, positions, 12, offsets, members, codes)
    assert enumerator.total == 48
    batch = enumerator(5, 40)
    np.testing.assert_array_equal(batch, _native.enumerate_candidates(base, positions, 12, offsets, members, codes,
                                                                        5, 40))
    for b, rank in enumerate(range(5, 45)):
        digits = enumerator.digits(rank)
        expect = base.copy()
        expect[positions] = codes[members[offsets[:-1] + digits], 0]
        np.testing.assert_array_equal(batch[b], expect)
    with pytest.raises(ValueError, match="exceeds"):
        enumerator(40, 9)


def test_enumerator_checks_values_before_any_batch():
    codes = np.array([[0.0], [1.0]], np.float32)
    base = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="code index"):
        _native.CandidateEnumerator(base, np.array([1], np.int64), 4, np.array([0, 2], np.int64),
                                    np.array([0, 5], np.int32), codes)
    with pytest.raises(ValueError, match="outside the image"):
        _native.CandidateEnumerator(base, np.array([4], np.int64), 4, np.array([0, 2], np.int64),
                                    np.array([0, 1], np.int32), codes)


# --------------------------------------------------------------------------
# Neighbourhood sizes through the door (host path; the CUDA path is in test_cuda.py)


def test_neighbourhood_sizes_host_path():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(500, 3), dtype=np.uint8)
    values, sizes = _native.neighbourhood_sizes(x.reshape(-1), 500, 3, 1, 4)
    levels = np.rint(values * 255).astype(np.int64)
    expect = [(np.abs(x.astype(np.int64) - v).max(axis=1) <= 4).sum() for v in levels]
    np.testing.assert_array_equal(sizes, expect)
    with pytest.raises(ValueError, match="8-bit"):
        _native.neighbourhood_sizes(np.full(3, 0.5, np.float32), 1, 3, 1, 1)
    with pytest.raises(ValueError, match="radius"):
        _native.neighbourhood_sizes(x.reshape(-1), 500, 3, 1, -1)


# --------------------------------------------------------------------------
# The CUDA bindings' own checks run before any memory is touched, so they are
# testable wherever the CUDA module is built, GPU or not.

needs_cuda_module = pytest.mark.skipif(_native._cuda is None, reason="pixdisc was built without its CUDA module")


class _Interface:
    def __init__(self, shape, typestr, strides=None, data=0):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (data, False), "version": 3,
                                         "strides": strides}


@needs_cuda_module
def test_cuda_bindings_check_dtype_shape_and_layout_first():
    cuda = _native._cuda
    with pytest.raises(ValueError, match="int64 CUDA array, got typestr=<i4"):
        cuda.summed_area_table(_Interface((0,), "<i4"), 0)
    with pytest.raises(ValueError, match="256 or 256\\^3"):
        cuda.summed_area_table(_Interface((0,), "<i8"), 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.summed_area_table(_Interface((256, 3), "<i8", strides=(8, 2048), data=8), 0)
    with pytest.raises(TypeError, match="__cuda_array_interface__"):
        cuda.summed_area_table(np.zeros(256, np.int64), 0)
    host = np.zeros(256, np.int64)
    with pytest.raises(ValueError, match="host memory|not CUDA memory"):
        cuda.summed_area_table(_Interface((256,), "<i8", data=host.ctypes.data), 0)
    with pytest.raises(ValueError, match="float32 \\(k, C\\) host array"):
        cuda.NearestIndex(np.zeros((2, 3), np.float64), 0, 0)
    with pytest.raises(ValueError, match="1 to 4"):
        cuda.NearestIndex(np.zeros((2, 5), np.float32), 0, 0)
