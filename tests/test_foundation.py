"""Tests of the shared foundation: input validation and device/size selection."""

import math
import warnings

import numpy as np
import pytest
import torch

from dlmath import _checks, device


def test_as_float_tensor_keeps_tensors_and_converts_array_likes():
    x = torch.ones(3, dtype=torch.float64)
    assert _checks.as_float_tensor(x, "x") is x
    assert _checks.as_float_tensor([1, 2], "x").dtype == torch.get_default_dtype()
    assert _checks.as_float_tensor(np.ones(2), "x").dtype == torch.float64
    # dtype=: array-likes read directly in it (0.2 not rounded through float32 first)
    read = _checks.as_float_tensor([0.2, 3], "x", dtype=torch.float64)
    assert read.dtype == torch.float64 and read.tolist() == [0.2, 3.0]
    assert _checks.as_float_tensor(0.7, "x", min_ndim=0, dtype=torch.float64).item() == 0.7
    assert _checks.as_float_tensor(x, "x", dtype=torch.float64) is x       # tensors kept
    with pytest.raises(TypeError, match="floating dtype"):
        _checks.as_float_tensor([True, False], "x", dtype=torch.float64)   # still refused


def test_check_float_dtype_names_the_argument():
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert _checks.check_float_dtype(dt) is dt
    for bad in (torch.int64, torch.bool, "float32", None):
        with pytest.raises(TypeError, match="ddt must be a floating torch.dtype"):
            _checks.check_float_dtype(bad, "ddt")


@pytest.mark.parametrize("value, error, match", [
    (torch.tensor([1, 2]), TypeError, "x must have a floating dtype"),
    (torch.tensor([True]), TypeError, "floating dtype"),
    (torch.tensor(1.0), ValueError, "at least 1 dimension"),
    (torch.tensor([]), ValueError, "must not be empty"),
    (object(), TypeError, "x must be a torch.Tensor or array-like"),
])
def test_as_float_tensor_errors(value, error, match):
    with pytest.raises(error, match=match):
        _checks.as_float_tensor(value, "x")


def test_complex_is_accepted_only_when_asked():
    z = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64)
    with pytest.raises(TypeError, match="z must have a floating dtype"):
        _checks.as_float_tensor(z, "z")
    assert _checks.as_float_tensor(z, "z", complex_ok=True) is z
    assert _checks.as_float_tensor([1j, 2], "z", complex_ok=True).is_complex()
    with pytest.raises(TypeError, match="z must have a real or complex floating dtype"):
        _checks.as_float_tensor(torch.tensor([1, 2]), "z", complex_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "ComplexHalf support is experimental"
        half = torch.zeros(2, dtype=torch.complex32)
    with pytest.raises(TypeError, match="complex32"):
        _checks.as_float_tensor(half, "z", complex_ok=True)
    # finiteness looks at both parts of a complex number
    assert _checks.all_finite(z)
    for bad, what in ((complex(1, math.inf), "inf"), (complex(math.nan, 0), "NaN")):
        w = torch.tensor([1j, bad], dtype=torch.complex128)
        assert not _checks.all_finite(w)
        with pytest.raises(ValueError, match=f"z must be finite, but it contains {what}"):
            _checks.check_finite(w, "z")


def test_check_matrix_and_finite():
    with pytest.raises(ValueError, match="W must have at least 2"):
        _checks.check_matrix(torch.ones(3), "W")
    with pytest.raises(ValueError, match="W must not be empty"):
        _checks.check_matrix(torch.ones(2, 0), "W")
    with pytest.raises(ValueError, match="W must be finite, but it contains inf"):
        _checks.check_matrix(torch.tensor([[1.0, math.inf]]), "W")
    with pytest.raises(ValueError, match="contains NaN"):
        _checks.check_matrix(torch.tensor([[1.0, math.nan]]), "W")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finiteness_fast_path_is_exact(dtype):
    # the checks first test the sum; a sum that overflows, or inf - inf = NaN, must fall back to
    # the elementwise test rather than report a value the tensor does not hold
    big = torch.full((4, 4), torch.finfo(dtype).max, dtype=dtype)
    assert not torch.isfinite(big.sum())
    assert _checks.check_finite(big, "x") is big
    both = torch.tensor([math.inf, -math.inf], dtype=dtype)
    assert torch.isnan(both.sum())
    assert _checks.check_no_nan(both, "x") is both
    with pytest.raises(ValueError, match="x must be finite, but it contains inf"):
        _checks.check_finite(both, "x")
    with pytest.raises(ValueError, match="x contains NaN"):
        _checks.check_no_nan(torch.tensor([1.0, math.nan, -math.inf], dtype=dtype), "x")


def test_check_reals_takes_exactly_n_numbers():
    pair = "a pair (beta1, beta2)"
    assert _checks.check_reals([0.9, 1], "betas", 2, pair) == (0.9, 1.0)
    assert _checks.check_reals(torch.tensor([0.5, 0.25]), "betas", 2, pair) == (0.5, 0.25)
    assert _checks.check_reals(np.array([0.5, 0.25]), "betas", 2, pair) == (0.5, 0.25)
    # no length (a number, a 0-d tensor), the wrong length or rank, text, an unordered set
    for bad in (0.9, torch.tensor(0.9), (0.9,), (0.9, 0.9, 0.9), torch.zeros(2, 1), "09",
                b"09", {0.9, 0.5}):
        with pytest.raises(TypeError, match=r"betas must be a pair \(beta1, beta2\), got"):
            _checks.check_reals(bad, "betas", 2, pair)
    with pytest.raises(TypeError, match=r"betas\[1\] must be a real number, got bool"):
        _checks.check_reals((0.9, True), "betas", 2, pair)
    with pytest.raises(ValueError, match=r"betas\[0\] must be <= 1"):
        _checks.check_reals((1.5, 0.9), "betas", 2, pair, high=1.0)


def test_check_real_int_choice_probability():
    assert _checks.check_real(2, "lr", positive=True) == 2.0
    with pytest.raises(TypeError, match="lr must be a real number"):
        _checks.check_real(True, "lr")
    with pytest.raises(ValueError, match="lr must be > 0"):
        _checks.check_real(0.0, "lr", positive=True)
    with pytest.raises(ValueError, match="beta must be <= 1"):
        _checks.check_real(1.5, "beta", high=1.0)
    assert _checks.check_real(math.inf, "t", finite=False) == math.inf
    with pytest.raises(TypeError, match="steps must be an int"):
        _checks.check_int(2.0, "steps")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        _checks.check_int(0, "steps", low=1)
    with pytest.raises(ValueError, match="kind must be one of"):
        _checks.check_choice("x", "kind", ["a", "b"])
    with pytest.raises(ValueError, match="p must sum to 1"):
        _checks.check_probability(torch.tensor([0.2, 0.2]))
    # half precision: the tolerance is capped at 1e-2 (1e3 eps n alone would be about 2 here)
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match=r"p must sum to 1 along dim=-1; off by 0\.(2|199)"):
            _checks.check_probability(torch.tensor([0.5, 0.3], dtype=dtype))
        _checks.check_probability(torch.tensor([0.5, 0.5], dtype=dtype))
        _checks.check_probability(torch.full((1000,), 1e-3, dtype=dtype))  # rounded entries


def test_device_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("DLMATH_DEVICE", raising=False)
    monkeypatch.delenv("DLMATH_SIZE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.default_device().type == expected
    assert device.preset("cpu") == "small" and device.preset("cuda") == "large"
    assert device.pick(cpu=1, gpu=2, device="cpu") == 1
    assert device.pick(cpu=1, gpu=2, device="cuda") == 2
    monkeypatch.setenv("DLMATH_SIZE", "large")
    assert device.pick(cpu=1, gpu=2, device="cpu") == 2
    monkeypatch.setenv("DLMATH_SIZE", "huge")
    with pytest.raises(ValueError, match="DLMATH_SIZE must be one of"):
        device.preset()
    monkeypatch.setenv("DLMATH_DEVICE", "not-a-device")
    with pytest.raises(ValueError, match="DLMATH_DEVICE"):
        device.default_device()
    # MPS has no float64, which every chapter's checks use: refused up front, not deep in a cell
    for name in ("mps", "mps:0"):
        monkeypatch.setenv("DLMATH_DEVICE", name)
        with pytest.raises(ValueError, match=f"DLMATH_DEVICE='{name}'.*float64.*use 'cpu'"):
            device.default_device()
    monkeypatch.setenv("DLMATH_DEVICE", "cuda:1")
    assert device.default_device() == torch.device("cuda", 1)   # named, not checked for presence
    # a device argument that torch cannot parse is named, not torch's list of device types
    monkeypatch.delenv("DLMATH_SIZE")
    for call in (lambda: device.preset("gpu0"), lambda: device.generator(0, "gpu0"),
                 lambda: device.compute_dtype("gpu0"), lambda: device.describe("gpu0"),
                 lambda: device.pick(cpu=1, gpu=2, device=3.5)):
        with pytest.raises(ValueError, match="device must be a torch.device or a device name"):
            call()


def test_generators_are_seeded_and_independent():
    a = torch.rand(3, generator=device.generator(7, "cpu"))
    b = torch.rand(3, generator=device.generator(7, "cpu"))
    c = torch.rand(3, generator=device.generator(8, "cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        device.generator(-1, "cpu")


def test_compute_dtype():
    assert device.compute_dtype("cpu") == torch.float64
    assert device.compute_dtype("cpu", fast=True) == torch.float32
    assert device.compute_dtype("cuda", fast=True) == torch.bfloat16


def test_check_generator():
    g = torch.Generator()
    assert _checks.check_generator(g) is g
    assert _checks.check_generator(g, "cpu") is g
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        _checks.check_generator(0)
    with pytest.raises(ValueError, match="generator is on cpu, labels on meta"):
        _checks.check_generator(g, torch.device("meta"), of="labels")


def test_describe_names_device_preset_and_torch(monkeypatch):
    monkeypatch.delenv("DLMATH_SIZE", raising=False)
    assert device.describe("cpu") == f"device: cpu (CPU), preset: small, torch {torch.__version__}"
    monkeypatch.setenv("DLMATH_SIZE", "large")
    described = device.describe(torch.device("cpu"))
    assert described.endswith(f"preset: large, torch {torch.__version__}")
    monkeypatch.delenv("DLMATH_SIZE")
    monkeypatch.setenv("DLMATH_DEVICE", "cpu")
    assert device.describe() == device.describe("cpu")


def test_broadcasts_to_means_without_growing_the_target():
    fits = _checks.broadcasts_to
    assert fits((), (3, 4)) and fits((4,), (3, 4)) and fits((1, 4), (3, 4))
    assert fits((3, 4), (3, 4)) and fits(torch.Size([2]), torch.Size([5, 2]))
    assert not fits((2, 3, 4), (3, 4))   # would grow the target
    assert not fits((5,), (3, 4))        # does not broadcast at all
    assert not fits((3, 1), (1, 4))      # broadcasts both ways, grows the target


def test_check_callable_names_the_argument_and_how_it_is_called():
    assert _checks.check_callable(len, "f") is len
    with pytest.raises(TypeError, match=r"^grad_fn must be callable as grad_fn\(theta\), got int$"):
        _checks.check_callable(3, "grad_fn", "grad_fn(theta)")
    with pytest.raises(TypeError, match=r"^model must be callable, got NoneType$"):
        _checks.check_callable(None, "model")


def test_check_returned_names_the_call_and_the_shapes():
    t = torch.zeros(2, 3)
    assert _checks.check_returned(t, "f(x)", (2, 3)) is t
    assert _checks.check_returned(t, "f(x)", torch.Size([2, 3])) is t
    with pytest.raises(ValueError) as info:
        _checks.check_returned(torch.zeros(3), "f(x)", (2, 3))
    assert str(info.value) == "f(x) must return a tensor of shape (2, 3), got (3,)"
    with pytest.raises(ValueError) as info:
        _checks.check_returned([1.0, 2.0], "v(x, t)", (2,))
    assert str(info.value) == "v(x, t) must return a tensor of shape (2,), got list"


def test_promote_follows_torchs_rules():
    a64, b32 = torch.ones(2, dtype=torch.float64), torch.ones(2)
    h = torch.ones(2, dtype=torch.bfloat16)
    assert [t.dtype for t in _checks.promote(b32, a64)] == [torch.float64] * 2
    assert [t.dtype for t in _checks.promote(h, b32)] == [torch.float32] * 2
    assert _checks.promote(b32, b32)[0] is b32                      # nothing to cast: no copy


def test_check_broadcast_names_the_arguments():
    assert _checks.check_broadcast(a=(2, 1, 3), b=(4, 1)) == torch.Size([2, 4, 3])
    with pytest.raises(ValueError, match=r"a \(2, 3\) and b \(4, 3\) do not broadcast"):
        _checks.check_broadcast(a=(2, 3), b=(4, 3))
