"""nn.MultiheadAttention: the q/k/v and output projections run through quantized linear kernels,
the attention itself in float with nn.MultiheadAttention's semantics (masks, need_weights,
batch_first, kdim/vdim, add_bias_kv, add_zero_attn, unbatched inputs, dropout in training)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from quantcore.plugin import ConversionContext, QuantizedContainer, QuantizedLinear, QuantizedModule
from quantcore_layers.common import (
    module_bias,
    module_tensor,
    quantized_linear,
    refuse_overridden_forward,
)


class FloatWeightUnavailable(torch.Tensor):
    """Stands where torch's fused transformer fast paths read ``in_proj_weight``/``in_proj_bias``.

    The quantized attention holds no float projection weights. Being a tensor subclass (it has
    ``__torch_function__``), it makes TransformerEncoderLayer and TransformerEncoder take their own
    documented slow path ("some Tensor argument has_torch_function") instead of calling the fused
    float kernel with int8 tensors, which is what breaks torch.ao's quantized encoder in eval mode.
    """


def _unavailable() -> torch.Tensor:
    return torch.empty(0).as_subclass(FloatWeightUnavailable)


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive float mask: boolean True means "may not attend" (-inf)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    if not mask.is_floating_point():
        raise AssertionError(
            f"only bool and floating types of masks are supported, got {mask.dtype}"
        )
    return mask.to(dtype)


class QuantizedMultiheadAttention(QuantizedContainer):
    """Drop-in for nn.MultiheadAttention (same forward signature and outputs)."""

    def __init__(
        self,
        source: nn.MultiheadAttention,
        q_proj: QuantizedLinear,
        k_proj: QuantizedLinear,
        v_proj: QuantizedLinear,
        out_proj: QuantizedLinear,
        bias_k: torch.Tensor | None,
        bias_v: torch.Tensor | None,
    ) -> None:
        super().__init__("attention")
        self.embed_dim = source.embed_dim
        self.kdim = source.kdim
        self.vdim = source.vdim
        self.num_heads = source.num_heads
        self.head_dim = source.head_dim
        self.dropout = source.dropout
        self.batch_first = source.batch_first
        self.add_zero_attn = source.add_zero_attn
        self._qkv_same_embed_dim = source._qkv_same_embed_dim
        self._has_in_proj_bias = source.in_proj_bias is not None
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.out_proj = out_proj
        self.bias_k = None if bias_k is None else nn.Parameter(bias_k, requires_grad=False)
        self.bias_v = None if bias_v is None else nn.Parameter(bias_v, requires_grad=False)
        self._prepare_kernel()

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return _unavailable()

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return _unavailable() if self._has_in_proj_bias else None

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention does)"
            )
        batched = query.dim() == 3
        if batched and self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        dtype = query.dtype
        key_padding_mask = _float_mask(key_padding_mask, dtype)
        attn_mask = _float_mask(attn_mask, dtype)
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)

        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.to(k.dtype).expand(1, bsz, -1)])
            v = torch.cat([v, self.bias_v.to(v.dtype).expand(1, bsz, -1)])
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))

        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz * heads, 1, head_dim)], dim=1)
            v = torch.cat([v, v.new_zeros(bsz * heads, 1, head_dim)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[1]
        if key_padding_mask is not None:
            kpm = key_padding_mask.reshape(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
            kpm = kpm.reshape(bsz * heads, 1, src_len)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        dropout = self.dropout if self.training else 0.0

        out, weights = self._attend(
            q, k, v, attn_mask, dropout, need_weights and average_attn_weights, need_weights
        )
        if weights is not None and not batched:
            weights = weights.squeeze(0)
        out = self.out_proj(out).reshape(tgt_len, bsz, -1)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        dropout: float,
        average_weights: bool,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scaled dot-product attention over ``[bsz * heads, len, head_dim]`` projections: the
        explicit softmax when the weights are wanted, torch's fused kernel otherwise. Returns
        ``[tgt_len * bsz, embed_dim]`` and the weights (per head or averaged)."""
        heads, head_dim = self.num_heads, self.head_dim
        bsz, tgt_len, src_len = q.shape[0] // heads, q.shape[1], k.shape[1]
        if need_weights:
            scores = torch.bmm(q * (1.0 / math.sqrt(head_dim)), k.transpose(1, 2))
            if attn_mask is not None:
                scores = scores + attn_mask
            probs = torch.softmax(scores, dim=-1)
            if dropout > 0.0:
                probs = F.dropout(probs, p=dropout)
            out = torch.bmm(probs, v).transpose(0, 1).reshape(tgt_len * bsz, self.embed_dim)
            weights = probs.reshape(bsz, heads, tgt_len, src_len)
            return out, (weights.mean(dim=1) if average_weights else weights)
        if attn_mask is not None:
            if attn_mask.shape[0] == 1:
                attn_mask = attn_mask.unsqueeze(0)
            else:
                attn_mask = attn_mask.reshape(bsz, heads, -1, src_len)
        out = F.scaled_dot_product_attention(
            q.reshape(bsz, heads, tgt_len, head_dim),
            k.reshape(bsz, heads, src_len, head_dim),
            v.reshape(bsz, heads, src_len, head_dim),
            attn_mask=attn_mask,
            dropout_p=dropout,
        )
        return out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, self.embed_dim), None

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"batch_first={self.batch_first}, kernel={self.kernel_name}"
        )


def is_multihead_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) and not isinstance(module, QuantizedModule)


def convert_multihead_attention(module: nn.Module, ctx: ConversionContext) -> nn.Module:
    assert isinstance(module, nn.MultiheadAttention)
    refuse_overridden_forward(module, nn.MultiheadAttention)
    e = module.embed_dim
    if module._qkv_same_embed_dim:
        packed = module_tensor(module, "in_proj_weight", ctx)
        # Row slices of the packed weight: per-row quantization of a slice equals the slice of
        # the per-row quantization, and each projection can take its own input.
        weights = [packed[:e], packed[e : 2 * e], packed[2 * e :]]
    else:
        weights = [module_tensor(module, f"{n}_proj_weight", ctx) for n in ("q", "k", "v")]
    packed_bias = module_bias(module, "in_proj_bias", ctx)
    biases: list[torch.Tensor | None] = (
        [None, None, None]
        if packed_bias is None
        else [packed_bias[:e].clone(), packed_bias[e : 2 * e].clone(), packed_bias[2 * e :].clone()]
    )
    q_proj, k_proj, v_proj = (
        quantized_linear(ctx, w, b) for w, b in zip(weights, biases, strict=True)
    )
    out = module.out_proj
    out_proj = quantized_linear(
        ctx, module_tensor(out, "weight", ctx), module_bias(out, "bias", ctx)
    )
    return QuantizedMultiheadAttention(
        module,
        q_proj,
        k_proj,
        v_proj,
        out_proj,
        module_bias(module, "bias_k", ctx),
        module_bias(module, "bias_v", ctx),
    )


def attention_state_dict_layers(state_dict: Mapping[str, torch.Tensor]) -> Iterator[str]:
    """Prefixes holding MultiheadAttention's tensors: ``in_proj_weight`` (packed) or
    ``q_proj_weight`` (separate); the claim covers ``out_proj.*`` too."""
    for key, tensor in state_dict.items():
        for name in ("in_proj_weight", "q_proj_weight"):
            if (key == name or key.endswith("." + name)) and tensor.dim() == 2:
                yield key[: -len(name)]


def convert_attention_state_dict(
    prefix: str, tensors: Mapping[str, torch.Tensor], ctx: ConversionContext
) -> dict[str, torch.Tensor]:
    if "in_proj_weight" in tensors:
        packed = tensors["in_proj_weight"]
        e = packed.shape[0] // 3
        weights = [packed[:e], packed[e : 2 * e], packed[2 * e :]]
    else:
        weights = [tensors[f"{n}_proj_weight"] for n in ("q", "k", "v")]
        e = weights[0].shape[0]
    bias = tensors.get("in_proj_bias")
    out: dict[str, torch.Tensor] = {}
    for i, (name, weight) in enumerate(zip(("q_proj", "k_proj", "v_proj"), weights, strict=True)):
        out.update(ctx.quantize_weight(weight).tensors(f"{name}.weight"))
        if bias is not None:
            out[f"{name}.bias"] = bias[i * e : (i + 1) * e].clone()
    if "out_proj.weight" in tensors:
        out.update(ctx.quantize_weight(tensors["out_proj.weight"]).tensors("out_proj.weight"))
    used = {"in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"}
    for key in sorted(set(tensors) - used - {"out_proj.weight"}):
        out[key] = ctx.clone(tensors[key])
    return out
