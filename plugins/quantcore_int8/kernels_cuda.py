"""CUDA kernel backends for int8 linear layers.

Importing this module needs neither a GPU nor triton: both are looked for only when a backend is
asked whether it is available, and triton is imported only when a kernel is prepared on CUDA.

* ``int8-linear-cuda-triton``: fused per-token activation quantization (symmetric or with zero
  points) and an int8 GEMM whose epilogue applies the zero-point term, the scales and the bias
  (large token counts); int8 weights dequantized in registers for a few tokens (decode).
  Kernels in ``triton_kernels``.
* ``int8-linear-cuda-eager``: when CUDA is there but triton is not (Windows builds of torch):
  activation quantization in torch ops, ``torch._int_mm``, rescale in torch ops. Slower than
  fp16, but it keeps weights int8 and beats the reference, which dequantizes every call.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from quantcore.plugin import ActivationSpec, Granularity, KernelRequest
from quantcore_int8.kernels import prepare_reference_linear
from quantcore_int8.quantization import quantize_activation

Linear = Callable[[torch.Tensor], torch.Tensor]

# K * 127 * 127 must fit the int32 accumulator; with zero points, K * 255 * 127 (q - z spans 255).
MAX_K = (2**31 - 1) // (127 * 127)
MAX_K_ASYMMETRIC = (2**31 - 1) // (255 * 127)
# torch._int_mm on CUDA takes more than 16 rows; fewer are padded to this.
INT_MM_MIN_ROWS = 17
# int8 tensor-core kernels (Triton's and cuBLAS's) need compute capability 8.0 (Ampere) or newer.
MIN_CAPABILITY = (8, 0)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def triton_available() -> bool:
    return cuda_available() and triton_installed()


def _capable(device: torch.device) -> bool:
    """Compute capability check, only when a GPU is there to ask (supports() must also answer
    for a CUDA request on a machine without one, where is_available() already says no)."""
    if not torch.cuda.is_available():
        return True
    return tuple(torch.cuda.get_device_capability(device)) >= MIN_CAPABILITY


def supports_cuda_linear(request: KernelRequest) -> bool:
    """Symmetric per-output-channel int8 weights with 8-bit per-token activations (with or
    without zero points), on CUDA."""
    return _per_token_8bit(request.activation) and _cuda_linear_layout(request)


def _per_token_8bit(activation: ActivationSpec | None) -> bool:
    return (
        activation is not None
        and activation.granularity is Granularity.PER_TOKEN
        and activation.bits in (None, 8)
    )


def _cuda_linear_layout(request: KernelRequest) -> bool:
    """Symmetric per-output-channel int8 weights of a linear layer on a capable CUDA device."""
    weight = request.weight
    if request.device.type != "cuda" or request.op != "linear":
        return False
    if weight.data.dim() != 2 or weight.data.dtype != torch.int8:
        return False
    if weight.zero_point is not None or weight.scale is None:
        return False
    n, k = weight.data.shape
    if weight.scale.numel() != n or (weight.spec is not None and weight.spec.axis % 2 != 0):
        return False
    symmetric = request.activation is None or request.activation.symmetric
    if k > (MAX_K if symmetric else MAX_K_ASYMMETRIC):
        return False
    return _capable(request.device)


def _int_mm_shape(weight: torch.Tensor) -> bool:
    """What torch._int_mm accepts on CUDA besides the row count: K and N multiples of 8."""
    n, k = weight.shape
    return n % 8 == 0 and k % 8 == 0


def supports_int_mm(request: KernelRequest) -> bool:
    """The eager path takes per-token activations with or without zero points."""
    return (
        _per_token_8bit(request.activation)
        and _cuda_linear_layout(request)
        and _int_mm_shape(request.weight.data)
    )


def _operands(
    request: KernelRequest,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Weight [N, K] contiguous int8, per-channel float32 scales [N], bias (float32) or None."""
    assert request.weight.scale is not None
    weight = request.weight.data.contiguous()
    scale = request.weight.scale.reshape(-1).to(torch.float32).contiguous()
    bias = None if request.bias is None else request.bias.detach().to(torch.float32).contiguous()
    return weight, scale, bias


def _with_fallback(
    request: KernelRequest, fast: Callable[[torch.Tensor], torch.Tensor], out_features: int
) -> Linear:
    """Run ``fast`` on the input flattened to 2-D; other input dtypes go to the reference kernel.

    The output carries no gradient: int8 layers are for inference (rounding has zero gradient,
    so the reference path gives no useful one either), and sending inputs that merely require
    grad to the slow path would make every forward outside ``torch.no_grad()`` slow."""
    reference = prepare_reference_linear(request)

    def linear(x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _FLOAT_DTYPES:
            return reference(x)
        x2 = x.reshape(-1, x.shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        return fast(x2).reshape(*x.shape[:-1], out_features)

    return linear


def prepare_triton_linear(request: KernelRequest, gemm: str = "triton") -> Linear:
    """``gemm="triton"``: Triton int8 GEMM with fused epilogue for more than 16 rows;
    ``gemm="int_mm"``: torch._int_mm plus a fused rescale kernel (compared in benchmarks/gpu.py).
    """
    from quantcore_int8 import triton_kernels as tk

    if gemm not in ("triton", "int_mm"):
        raise ValueError(f"gemm must be 'triton' or 'int_mm', not {gemm!r}")
    weight, scale, bias = _operands(request)
    assert request.activation is not None
    symmetric = request.activation.symmetric
    sums = None if symmetric else tk.weight_sums(weight)
    int_mm = gemm == "int_mm" and _int_mm_shape(weight)

    def run(x2: torch.Tensor) -> torch.Tensor:
        if x2.shape[0] <= tk.SMALL_M:
            return tk.int8_linear_weight_only(x2, weight, scale, bias)
        if int_mm:
            return tk.int8_linear_int_mm(x2, weight, scale, bias, symmetric, sums)
        return tk.int8_linear_quantized(x2, weight, scale, bias, symmetric=symmetric, sums=sums)

    return _with_fallback(request, run, weight.shape[0])


def eager_int_mm_linear(
    x2: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    activation: ActivationSpec,
    weight_sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token int8 linear in torch ops around torch._int_mm (rows padded to what it accepts).

    ``weight_sums`` (per-channel ``scale * sum_k w``) serves asymmetric activations; computed
    here when not given."""
    m = x2.shape[0]
    q, x_scale, zero_point = quantize_activation(x2, activation)
    if m < INT_MM_MIN_ROWS:
        q = torch.nn.functional.pad(q, (0, 0, 0, INT_MM_MIN_ROWS - m))
    acc = torch._int_mm(q, weight.t())[:m]
    out = acc.to(torch.float32) * x_scale.reshape(-1, 1) * weight_scale
    if zero_point is not None:  # sum_k (q - zp) w = sum_k q w - zp sum_k w: a rank-1 correction
        if weight_sums is None:
            weight_sums = _weight_sums(weight, weight_scale)
        out = out - (x_scale.reshape(-1, 1) * zero_point.reshape(-1, 1)) * weight_sums
    if bias is not None:
        out = out + bias
    return out.to(x2.dtype)


def _weight_sums(weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    return weight.sum(1, dtype=torch.int32).to(torch.float32) * weight_scale


def prepare_eager_linear(request: KernelRequest) -> Linear:
    weight, scale, bias = _operands(request)
    activation = request.activation
    assert activation is not None
    sums = None if activation.symmetric else _weight_sums(weight, scale)

    def run(x2: torch.Tensor) -> torch.Tensor:
        return eager_int_mm_linear(x2, weight, scale, bias, activation, sums)

    return _with_fallback(request, run, weight.shape[0])
