"""A layer whose kernel keeps a packed copy of the weight (quantcore.plugin.PackedWeightKernel) drops
its plain copy at run time, so the weight is in memory once; everything that reads the plain
weight (state dict, saving, float view, moves, copies, loads, requantizing) still gets the same
values."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import quantcore_native
import torch
from quantcore_fp16 import kernels_cpu as fp16_cpu
from quantcore_int8 import cpu_gemms as int8_gemms
from torch import nn

import quantcore

# (dtype, a call that makes the kernel pack the copy it can rebuild the weight from)
RELEASING_CALLS = {"int8": 1, "fp16": 5}  # int8: fbgemm serves one token; fp16: up to 1024


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16, bias=False)).eval()


def _quantized(dtype: str) -> nn.Module:
    module = quantcore.quantize(_model(), dtype).module
    assert module is not None
    kernel = module[0]._kernel
    if dtype == "int8" and not int8_gemms.fbgemm_unpack_available():
        pytest.skip("this torch cannot unpack fbgemm's int8 weights")
    if dtype == "fp16" and not fp16_cpu.fbgemm_fp16_unpack_available():
        pytest.skip("this torch cannot unpack fbgemm's fp16 weights")
    # fbgemm can unpack here, so its kernels must serve (a refusal is no reason to skip)
    assert isinstance(kernel, quantcore.plugin.PackedWeightKernel), module[0].kernel_name
    return module


def _released(dtype: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A quantized model run once (its plain weights released), and its state dict before."""
    module = _quantized(dtype)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module(torch.randn(RELEASING_CALLS[dtype], 64))
    assert all(module[i]._buffers["weight"].is_meta for i in (0, 2))
    return module, before


def _assert_same_state(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = module.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert not got[key].is_meta, key
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def _inputs() -> list[torch.Tensor]:
    torch.manual_seed(3)
    return [torch.randn(n, 64) for n in (1, 3, 100, 1100)]  # every kernel path


def _outputs(module: nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        return [module(x) for x in _inputs()]


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_the_plain_weight_is_freed_once_the_kernel_has_packed_it(dtype: str) -> None:
    module = _quantized(dtype)
    plain = weakref.ref(module[0]._buffers["weight"])
    expected = _outputs(_quantized(dtype))  # a model that never released anything
    with torch.no_grad():
        module(torch.randn(RELEASING_CALLS[dtype], 64))
    gc.collect()
    assert plain() is None  # no reference left: the memory is free
    weight = module[0]._buffers["weight"]
    assert weight.is_meta and weight.shape == (48, 64)
    for got, want in zip(_outputs(module), expected, strict=True):
        assert torch.equal(got, want)


def test_int8_keeps_its_plain_weight_while_only_onednn_has_packed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """oneDNN's packed weight cannot be unpacked: until fbgemm's exists, the plain copy stays."""
    monkeypatch.setattr(quantcore_native, "available", lambda: False)  # the fbgemm+oneDNN kernel
    module = _quantized("int8")
    with torch.no_grad():
        module(torch.randn(1100, 64))
    assert not module[0]._buffers["weight"].is_meta
    with torch.no_grad():
        module(torch.randn(1, 64))
    assert module[0]._buffers["weight"].is_meta


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_state_dict_float_view_and_files_are_unchanged_by_the_release(
    dtype: str, tmp_path: Path
) -> None:
    module, before = _released(dtype)
    fresh = _quantized(dtype)
    _assert_same_state(module, before)
    assert module[0]._buffers["weight"].is_meta  # reading the state dict keeps it released
    assert torch.equal(module[0].weight, fresh[0].weight)  # the dequantized float view
    quantcore.save(module, tmp_path / "released.pt")
    loaded = quantcore.load(tmp_path / "released.pt", _model())
    _assert_same_state(loaded, before)
    for got, want in zip(_outputs(loaded), _outputs(fresh), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize(
    "remake",
    [
        copy.deepcopy,
        lambda m: pickle.loads(pickle.dumps(m)),
        lambda m: quantcore.quantize(m, "int8").module,  # requantizing copies quantized layers
    ],
    ids=["deepcopy", "pickle", "requantize"],
)
def test_copies_of_a_released_model_hold_the_weights_and_the_original_stays_lean(
    dtype: str, remake: Callable[[nn.Module], nn.Module]
) -> None:
    module, before = _released(dtype)
    expected = _outputs(_quantized(dtype))
    other = remake(module)
    assert other is not module
    assert not other[0]._buffers["weight"].is_meta
    assert module[0]._buffers["weight"].is_meta
    _assert_same_state(other, before)
    for got, want in zip(_outputs(other), expected, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.to("cpu"),
        lambda m: m.share_memory(),
        lambda m: m.load_state_dict(_quantized(m.dtype_name).state_dict()),
    ],
    ids=["to-cpu", "share_memory", "load_state_dict"],
)
def test_moves_and_loads_put_the_plain_weight_back_first(
    dtype: str, change: Callable[[nn.Module], object]
) -> None:
    module, before = _released(dtype)
    expected = _outputs(_quantized(dtype))
    module.dtype_name = dtype  # type: ignore[assignment]  # for the load case
    change(module)
    assert not module[0]._buffers["weight"].is_meta
    _assert_same_state(module, before)
    for got, want in zip(_outputs(module), expected, strict=True):
        assert torch.equal(got, want)
    assert module[0]._buffers["weight"].is_meta  # released again by the calls above


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_gradients_still_flow_after_the_release(dtype: str) -> None:
    module, _ = _released(dtype)
    x = torch.randn(3, 64, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("native", [True, False])
def test_fp16_layers_serving_many_tokens_keep_a_plain_copy_for_mkl(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """Where MKL beats fbgemm for many tokens (CPUs without AVX512; simulated here for the native
    kernel), unpacking per call would cost several times the widening: a many-token call brings
    the plain copy back once, and it stays (both the native and the pure-torch fp16 kernels)."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    if not native:
        monkeypatch.setattr(quantcore_native, "available", lambda: False)
    elif not quantcore_native.available():
        pytest.skip(f"native kernels are off: {quantcore_native.unavailable_reason()}")
    module, _ = _released("fp16")
    expected = _outputs(_quantized("fp16"))
    kernels = [module[index]._kernel for index in (0, 2)]
    assert all(("native" in module[i].kernel_name) == native for i in (0, 2))
    with torch.no_grad():
        module(torch.randn(1100, 64))
    plain = "plain" if native else "weight"
    assert all(getattr(k, plain) is not None and k.serves_many_tokens for k in kernels)

    def no_unpack(packed: object) -> None:
        raise AssertionError("unpacked again")

    monkeypatch.setattr(torch.ops.quantized, "linear_unpack_fp16", no_unpack)
    for kernel in kernels:
        monkeypatch.setattr(kernel, "unpack", no_unpack, raising=False)
    for got, want in zip(_outputs(module), expected, strict=True):
        assert torch.equal(got, want)
    assert all(not k.release_plain_weight() for k in kernels)


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_a_kept_result_does_not_pin_the_plain_weight(dtype: str) -> None:
    """The README's way: keep the result, run result.module. The result reads its state dict
    from the module when asked, so the released weight is freed all the same."""
    _quantized(dtype)  # skips where no packed kernel serves
    result = quantcore.quantize(_model(), dtype)
    module = result.module
    assert module is not None
    before = {k: v.clone() for k, v in result.state_dict.items()}
    plain = weakref.ref(module[0]._buffers["weight"])
    with torch.no_grad():
        module(torch.randn(RELEASING_CALLS[dtype], 64))
    gc.collect()
    assert plain() is None
    got = result.state_dict
    assert got.keys() == before.keys()
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in before.items())


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_under_torch_compile_the_plain_weight_goes_too(dtype: str) -> None:
    """A call fbgemm serves inside a compiled graph is one opaque op, which bypasses the layer's
    own code; the kernel reports the call, so the plain weight is freed there as in eager mode,
    and nothing the graph depends on changes (no recompilation)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    module = _quantized(dtype)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    expected = _outputs(_quantized(dtype))
    plain = weakref.ref(module[0]._buffers["weight"])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter)
    x = torch.randn(RELEASING_CALLS[dtype], 64)
    with torch.no_grad():
        first = compiled(x)
        gc.collect()
        assert plain() is None
        assert all(module[i]._buffers["weight"].is_meta for i in (0, 2))
        assert torch.equal(compiled(x), first)
    assert counter.frame_count == 1
    _assert_same_state(module, before)
    for got, want in zip(_outputs(module), expected, strict=True):
        assert torch.equal(got, want)
