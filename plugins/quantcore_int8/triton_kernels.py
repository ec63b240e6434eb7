# Triton kernels take untyped pointer arguments (annotations would change how triton reads them).
# mypy: allow-untyped-defs, allow-incomplete-defs, allow-untyped-decorators
"""Triton kernels behind the CUDA int8 linear backend.

This module imports triton at the top, so nothing imports it until a CUDA int8 kernel is prepared
(``kernels_cuda`` does that lazily). Under ``TRITON_INTERPRET=1`` the same kernels run on CPU
tensors, which is how their math is tested on machines without a GPU (tests/cuda/).

Three launches cover the int8 linear layer:

* ``quantize_rows``: per-token symmetric activation quantization in one pass over the input
  (absmax, scale, round, clamp), instead of the half-dozen separate torch ops that make a naive
  int8 layer slower than fp16;
* ``int8_linear_quantized``: int8 x int8 GEMM with int32 accumulation whose epilogue applies
  per-token scale x per-channel scale and the bias, so the int32 product never reaches memory;
* ``int8_linear_weight_only``: for a handful of tokens (decode), the float input times int8
  weights converted in registers: reading half the bytes of an fp16 weight is what makes decode
  faster, and quantizing a few rows would only add a launch.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl

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
    K,
    stride_xm,
    stride_qm,
    BLOCK_K: tl.constexpr,
    TINY: tl.constexpr,
    MAGIC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + cols
        x = tl.load(x_ptr + row * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0) / 127.0, TINY)
    tl.store(scale_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + cols
        x = tl.load(x_ptr + row * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)
        v = tl.math.div_rn(x, scale)
        v = (v + MAGIC) - MAGIC
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)
        tl.store(q_ptr + row * stride_qm + offs, v.to(tl.int8), mask=offs < K)


@triton.jit
def _int8_linear_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
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
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C = A @ B^T with B int8 [N, K]. QUANT_A: A is int8 with per-row scales (int32 accumulate);
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
    M,
    N,
    stride_am,
    stride_cm,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Epilogue for torch._int_mm's int32 output, as one pass (used by the ``int_mm`` variant)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    acc = tl.load(acc_ptr + row * stride_am + cols, mask=mask, other=0).to(tl.float32)
    out = acc * tl.load(a_scale_ptr + row) * tl.load(b_scale_ptr + cols, mask=mask, other=0.0)
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


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values [M, K] and float32 per-row scales [M] of a 2-D input (last dim contiguous)."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    block_k = min(triton.next_power_of_2(k), 4096)
    _quantize_rows_kernel[(m,)](
        x,
        q,
        scale,
        k,
        x.stride(0),
        q.stride(0),
        BLOCK_K=block_k,
        TINY=_TINY,
        MAGIC=_ROUND_MAGIC,
        num_warps=8 if block_k >= 2048 else 4,
    )
    return q, scale


def _launch_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: Any | None,
) -> torch.Tensor:
    """``config`` (one of LARGE_CONFIGS/SMALL_CONFIGS) bypasses autotuning: tests under the
    interpreter check every config the autotuner may pick."""
    m, k = a.shape
    n = weight.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0:
        return out
    kernel = _small_gemm if m <= SMALL_M else _large_gemm
    if config is None and _interpreted():
        config = (SMALL_CONFIGS if m <= SMALL_M else LARGE_CONFIGS)[0]
    meta: dict[str, Any] = {}
    if config is not None:
        kernel = _int8_linear_kernel
        meta = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    quant_a = a_scale is not None
    kernel[_grid(m, n)](
        a,
        weight,
        out,
        a_scale if quant_a else weight_scale,  # unused when not QUANT_A
        weight_scale,
        bias if bias is not None else weight_scale,  # unused without HAS_BIAS
        m,
        n,
        k,
        _bucket(m),
        a.stride(0),
        a.stride(1),
        weight.stride(0),
        weight.stride(1),
        out.stride(0),
        out.stride(1),
        QUANT_A=quant_a,
        HAS_BIAS=bias is not None,
        IEEE=a.dtype == torch.float32,
        **meta,
    )
    return out


def int8_linear_quantized(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    config: Any | None = None,
) -> torch.Tensor:
    """Per-token int8 activations x per-channel int8 weights: fused quantize, then one GEMM with
    the rescale and bias in its epilogue. ``x`` is 2-D [M, K]; the result has ``x``'s dtype."""
    q, scale = quantize_rows(x)
    return _launch_gemm(q, scale, weight, weight_scale, bias, x.dtype, config)


def int8_linear_int_mm(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The same result through cuBLAS's int8 GEMM (torch._int_mm, M > 16) and a fused rescale:
    one more pass over an int32 [M, N] buffer, but cuBLAS's GEMM. Kept to compare on hardware."""
    q, scale = quantize_rows(x)
    acc = torch._int_mm(q, weight.t())
    m, n = acc.shape
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_n = 1024
    _rescale_kernel[(m, triton.cdiv(n, block_n))](
        acc,
        out,
        scale,
        weight_scale,
        bias if bias is not None else weight_scale,
        m,
        n,
        acc.stride(0),
        out.stride(0),
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
    return _launch_gemm(x, None, weight, weight_scale, bias, x.dtype, config)


def supported_input(x: torch.Tensor) -> bool:
    return x.dtype in _FLOAT_DTYPES
