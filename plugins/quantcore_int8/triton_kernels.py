# Triton kernels take untyped pointer arguments (annotations would change how triton reads them).
# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators
"""Triton kernels behind the CUDA int8 linear backend.

This module imports triton at the top, so nothing imports it until a CUDA int8 kernel is prepared
(``kernels_cuda`` does that lazily). Under ``TRITON_INTERPRET=1`` the same kernels run on CPU
tensors, which is how their math is tested on machines without a GPU (tests/cuda/).

Three launches cover the int8 linear layer:

* ``quantize_rows``: per-token activation quantization, symmetric or asymmetric, in one launch
  (range, scale, zero point, round, clamp), instead of the half-dozen separate torch ops that
  make a naive int8 layer slower than fp16; bit for bit what ``quantize_activation`` computes;
* ``int8_linear_quantized``: int8 x int8 GEMM with int32 accumulation whose epilogue subtracts
  the zero-point term (zero point x the weight row's sum, in int32), applies per-token scale x
  per-channel scale and the bias, so the int32 product never reaches memory;
* ``int8_linear_weight_only``: for a handful of tokens (decode), the float input times int8
  weights converted in registers: reading half the bytes of an fp16 weight is what makes decode
  faster, and quantizing a few rows would only add a launch.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from quantcore_int8.quantization import MIN_ACTIVATION_BOUND

# Adding then subtracting 1.5 * 2**23 rounds an fp32 value of magnitude < 2**22 to the nearest
# integer, ties to even, exactly like torch.round; it needs no libdevice, so the interpreter runs it.
_ROUND_MAGIC = 12582912.0
_TINY = torch.finfo(torch.float32).tiny
QMAX = 127
# Row counts up to this use the weight-only kernel; torch._int_mm needs more than 16 rows anyway.
SMALL_M = 16

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _quantize_rows_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,
    zero_point_ptr,
    K,
    stride_xm,
    stride_qm,
    SYMMETRIC: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TINY: tl.constexpr,
    MIN_BOUND: tl.constexpr,
    MAGIC: tl.constexpr,
):
    """One row per program: its range, then its values (quantize_activation's arithmetic)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    high = tl.zeros((BLOCK_K,), dtype=tl.float32)  # starting at 0 includes 0 in the range
    low = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + cols
        x = tl.load(x_ptr + row * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)
        if SYMMETRIC:
            high = tl.maximum(high, tl.abs(x))
        else:
            high = tl.maximum(high, x)
            low = tl.minimum(low, x)
    if SYMMETRIC:
        # torch computes 127 / bound as reciprocal(bound) * 127: two roundings, kept here
        bound = tl.maximum(tl.max(high, axis=0), MIN_BOUND)
        multiplier = tl.math.div_rn(1.0, bound) * 127.0
        scale = tl.math.div_rn(bound, 127.0)
        zero_point = 0.0
        qmin = -127.0
    else:
        # high / 255 - low / 255: the difference itself could overflow near float32's limit
        scale = tl.math.div_rn(tl.max(high, axis=0), 255.0)
        scale = tl.maximum(scale - tl.math.div_rn(tl.min(low, axis=0), 255.0), TINY)
        start = tl.math.div_rn(tl.min(low, axis=0), scale)
        multiplier = tl.math.div_rn(1.0, scale)  # x * (1 / scale), as the reference computes it
        zero_point = -128.0 - ((start + MAGIC) - MAGIC)
        zero_point = tl.minimum(tl.maximum(zero_point, -128.0), 127.0)
        qmin = -128.0
        tl.store(zero_point_ptr + row, zero_point.to(tl.int32))
    tl.store(scale_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + cols
        x = tl.load(x_ptr + row * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)
        v = x * multiplier
        v = (v + MAGIC) - MAGIC + zero_point
        v = tl.minimum(tl.maximum(v, qmin), 127.0)
        tl.store(q_ptr + row * stride_qm + offs, v.to(tl.int8), mask=offs < K)


@triton.jit
def _int8_linear_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    a_zero_ptr,
    b_sum_ptr,
    M,
    N,
    K,
    M_BUCKET,  # only part of the autotuning key: one tuning per size class, not per row count
    stride_am,
    stride_ak,
    stride_bn,
    stride_bk,
    stride_cm,
    stride_cn,
    QUANT_A: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C = A @ B^T with B int8 [N, K]. QUANT_A: A is int8 with per-row scales (int32 accumulate),
    and with HAS_ZERO per-row zero points: sum_k (a - z) b = sum_k a b - z sum_k b, in int32;
    otherwise A is float and B is converted to A's dtype in registers (fp32 accumulate)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped launch order: consecutive programs share B tiles in L2
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # out-of-range rows/columns read valid memory (wrapped) and are masked at the store
    rm = offs_m % M
    rn = offs_n % N
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rn[None, :].to(tl.int64) * stride_bn + rk[:, None] * stride_bk
    if QUANT_A:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = (k0 + rk) < K
        a = tl.load(a_ptrs, mask=k_mask[None, :], other=0)
        b = tl.load(b_ptrs, mask=k_mask[:, None], other=0)
        if QUANT_A:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        elif IEEE:
            acc = tl.dot(a, b.to(a.dtype), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b.to(a.dtype), acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if HAS_ZERO:
        a_zero = tl.load(a_zero_ptr + rm)
        b_sum = tl.load(b_sum_ptr + rn)
        acc = acc - a_zero[:, None] * b_sum[None, :]
    out = acc.to(tl.float32)
    if QUANT_A:
        a_scale = tl.load(a_scale_ptr + rm)
        out = out * a_scale[:, None]
    b_scale = tl.load(b_scale_ptr + rn)
    out = out * b_scale[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn).to(tl.float32)
        out = out + bias[None, :]
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rescale_kernel(
    acc_ptr,
    c_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    a_zero_ptr,
    b_sum_ptr,
    M,
    N,
    stride_am,
    stride_cm,
    HAS_ZERO: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Epilogue for torch._int_mm's int32 output, as one pass (used by the ``int_mm`` variant)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    acc = tl.load(acc_ptr + row * stride_am + cols, mask=mask, other=0)
    if HAS_ZERO:
        acc = acc - tl.load(a_zero_ptr + row) * tl.load(b_sum_ptr + cols, mask=mask, other=0)
    out = (
        acc.to(tl.float32)
        * tl.load(a_scale_ptr + row)
        * tl.load(b_scale_ptr + cols, mask=mask, other=0.0)
    )
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(c_ptr + row * stride_cm + cols, out.to(c_ptr.dtype.element_ty), mask=mask)


def _config(bm: int, bn: int, bk: int, stages: int, warps: int) -> Any:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
        num_stages=stages,
        num_warps=warps,
    )


# Few configs: each costs a compile the first time and a timing run per new (size class, N, K).
LARGE_CONFIGS = [
    _config(128, 128, 128, 3, 8),
    _config(128, 256, 128, 3, 8),
    _config(256, 128, 128, 3, 8),
    _config(128, 128, 64, 4, 4),
    _config(64, 128, 128, 4, 4),
    _config(64, 64, 128, 4, 4),
]
SMALL_CONFIGS = [
    _config(16, 32, 128, 4, 4),
    _config(16, 64, 128, 4, 4),
    _config(16, 32, 256, 3, 4),
    _config(16, 64, 256, 3, 4),
]

_KEY = ["M_BUCKET", "N", "K", "QUANT_A", "IEEE"]
_large_gemm = triton.autotune(configs=LARGE_CONFIGS, key=_KEY)(_int8_linear_kernel)
_small_gemm = triton.autotune(configs=SMALL_CONFIGS, key=_KEY)(_int8_linear_kernel)


def _interpreted() -> bool:
    """Under TRITON_INTERPRET=1 there is no device to time autotuning candidates on."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _bucket(m: int) -> int:
    return min(int(triton.next_power_of_2(max(m, 1))), 1 << 14)


def _grid(m: int, n: int) -> Any:
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


class RowQuantized(NamedTuple):
    """Per-token int8 activations: values [M, K], float32 scales [M], int32 zero points [M] or
    None (symmetric)."""

    values: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None


def quantize_rows(x: torch.Tensor, symmetric: bool = True) -> RowQuantized:
    """Quantize a 2-D input (last dim contiguous) per row, 8 bits, in one launch."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    zero_point = None if symmetric else torch.empty((m,), dtype=torch.int32, device=x.device)
    if m == 0:
        return RowQuantized(q, scale, zero_point)
    block_k = min(triton.next_power_of_2(k), 4096)
    _quantize_rows_kernel[(m,)](
        x,
        q,
        scale,
        scale if zero_point is None else zero_point,  # unused when symmetric
        k,
        x.stride(0),
        q.stride(0),
        SYMMETRIC=symmetric,
        BLOCK_K=block_k,
        TINY=_TINY,
        MIN_BOUND=MIN_ACTIVATION_BOUND,
        MAGIC=_ROUND_MAGIC,
        num_warps=8 if block_k >= 2048 else 4,
    )
    return RowQuantized(q, scale, zero_point)


def weight_sums(weight: torch.Tensor) -> torch.Tensor:
    """sum_k w[n, k] as int32: what the zero-point term of asymmetric activations needs."""
    return weight.sum(1, dtype=torch.int32)


def _launch_gemm(
    a: torch.Tensor | RowQuantized,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: Any | None,
    sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """``a`` is a float input (weight-only path) or quantized rows; ``sums`` (weight_sums) is
    needed when the rows have zero points. ``config`` (one of LARGE_CONFIGS/SMALL_CONFIGS)
    bypasses autotuning: tests under the interpreter check every config the autotuner may pick."""
    quantized = a if isinstance(a, RowQuantized) else None
    values = a.values if isinstance(a, RowQuantized) else a
    m, k = values.shape
    n = weight.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=values.device)
    if m == 0:
        return out
    kernel = _small_gemm if m <= SMALL_M else _large_gemm
    if config is None and _interpreted():
        config = (SMALL_CONFIGS if m <= SMALL_M else LARGE_CONFIGS)[0]
    meta: dict[str, Any] = {}
    if config is not None:
        kernel = _int8_linear_kernel
        meta = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    has_zero = quantized is not None and quantized.zero_point is not None
    if has_zero and sums is None:
        sums = weight_sums(weight)
    kernel[_grid(m, n)](
        values,
        weight,
        out,
        quantized.scale if quantized is not None else weight_scale,  # unused when not QUANT_A
        weight_scale,
        bias if bias is not None else weight_scale,  # unused without HAS_BIAS
        quantized.zero_point if has_zero else weight_scale,  # type: ignore[union-attr]
        sums if has_zero else weight_scale,  # unused without HAS_ZERO
        m,
        n,
        k,
        _bucket(m),
        values.stride(0),
        values.stride(1),
        weight.stride(0),
        weight.stride(1),
        out.stride(0),
        out.stride(1),
        QUANT_A=quantized is not None,
        HAS_ZERO=has_zero,
        HAS_BIAS=bias is not None,
        IEEE=values.dtype == torch.float32,
        **meta,
    )
    return out


def int8_linear_quantized(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    config: Any | None = None,
    symmetric: bool = True,
    sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token int8 activations (symmetric, or asymmetric with zero points) x per-channel int8
    weights: fused quantize, then one GEMM with the zero-point term, rescale and bias in its
    epilogue. ``x`` is 2-D [M, K]; the result has ``x``'s dtype."""
    rows = quantize_rows(x, symmetric)
    return _launch_gemm(rows, weight, weight_scale, bias, x.dtype, config, sums)


def int8_linear_int_mm(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    symmetric: bool = True,
    sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same result through cuBLAS's int8 GEMM (torch._int_mm, M > 16) and a fused rescale:
    one more pass over an int32 [M, N] buffer, but cuBLAS's GEMM. Kept to compare on hardware."""
    rows = quantize_rows(x, symmetric)
    acc = torch._int_mm(rows.values, weight.t())
    m, n = acc.shape
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    has_zero = rows.zero_point is not None
    if has_zero and sums is None:
        sums = weight_sums(weight)
    block_n = 1024
    _rescale_kernel[(m, triton.cdiv(n, block_n))](
        acc,
        out,
        rows.scale,
        weight_scale,
        bias if bias is not None else weight_scale,
        rows.zero_point if has_zero else weight_scale,
        sums if has_zero else weight_scale,
        m,
        n,
        acc.stride(0),
        out.stride(0),
        HAS_ZERO=has_zero,
        HAS_BIAS=bias is not None,
        BLOCK_N=block_n,
        num_warps=4,
    )
    return out


def int8_linear_weight_only(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    config: Any | None = None,
) -> torch.Tensor:
    """Float input times int8 weights dequantized in registers (no activation quantization)."""
    return _launch_gemm(x, weight, weight_scale, bias, x.dtype, config)


def supported_input(x: torch.Tensor) -> bool:
    return x.dtype in _FLOAT_DTYPES
