"""Model zoo for the quantcore test-suite.

Self-contained: imports torch (and, optionally, transformers) only -- never
quantcore.  Every entry builds a small model with seeded random weights (no
network / model hub access is needed), makes seeded inputs, and knows how to
run the model and reduce its output to ONE float tensor that tests can compare
(e.g. float model vs. quantized model).

Usage::

    from tests.zoo import all_zoo
    for e in all_zoo():
        model = e.build()            # same weights on every call, eval mode
        inputs = e.make_inputs()     # same inputs on every call
        out = e.run(model, inputs)   # one float tensor (run uses torch.no_grad)

``layer_kinds`` vocabulary (see LAYER_KINDS); conventions:

* ``linear``: an ``nn.Linear`` (or subclass, e.g. NonDynamicallyQuantizableLinear)
  that is *not* the ``out_proj`` of an ``nn.MultiheadAttention``; an MHA's
  out_proj is covered by ``multihead_attention``.
* ``embedding`` / ``embedding_bag``: nn.Embedding / nn.EmbeddingBag.
* ``hf_conv1d``: ``transformers.pytorch_utils.Conv1D`` (GPT-2 style transposed linear).
* ``conv1d``/``conv2d``/``conv3d``: nn.Conv1d/2d/3d (not ConvTranspose).
* ``lstm``/``gru``/``rnn`` and ``*_cell``: the recurrent modules.

``scan_layer_kinds(module)`` computes this set from a live module; the float
test checks that every entry's declared ``layer_kinds`` equals the scan.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LAYER_KINDS = frozenset(
    {
        "linear",
        "multihead_attention",
        "lstm",
        "gru",
        "rnn",
        "lstm_cell",
        "gru_cell",
        "rnn_cell",
        "embedding",
        "embedding_bag",
        "conv1d",
        "conv2d",
        "conv3d",
        "hf_conv1d",
    }
)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str  # "torch" or "hf"
    build: Callable[[], nn.Module]
    make_inputs: Callable[[], Any]
    run: Callable[[nn.Module, Any], torch.Tensor]
    layer_kinds: frozenset = field(default_factory=frozenset)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.family not in ("torch", "hf"):
            raise ValueError(f"{self.name}: bad family {self.family!r}")
        unknown = set(self.layer_kinds) - LAYER_KINDS
        if unknown:
            raise ValueError(f"{self.name}: unknown layer kinds {sorted(unknown)}")
        object.__setattr__(self, "layer_kinds", frozenset(self.layer_kinds))

    def output_error(self, output: torch.Tensor, reference: torch.Tensor) -> float:
        """Relative L2 error of an output, as the zoo test and the accuracy benchmark measure it."""
        if self.name == "transformer_encoder_post_norm":
            # torch's float fast path returns 0 at padded positions, its slow path (which
            # quantized attention takes, like any model in training mode) computes them: compare
            # real tokens.
            mask = reference.abs().sum(-1, keepdim=True) != 0
            output, reference = output * mask, reference * mask
        from tests.oracles import relative_error

        return relative_error(output, reference)


def _hf_conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D  # type: ignore

        return Conv1D
    except Exception:  # transformers missing or moved
        return None


def scan_layer_kinds(module: nn.Module) -> frozenset:
    """Layer kinds (from LAYER_KINDS) present in ``module`` (root included)."""
    kinds: set[str] = set()
    mha_out_projs = {
        id(m.out_proj) for m in module.modules() if isinstance(m, nn.MultiheadAttention)
    }
    hf_conv1d = _hf_conv1d_type()
    table = [
        (nn.MultiheadAttention, "multihead_attention"),
        (nn.LSTM, "lstm"),
        (nn.GRU, "gru"),
        (nn.LSTMCell, "lstm_cell"),
        (nn.GRUCell, "gru_cell"),
        (nn.RNNCell, "rnn_cell"),
        (nn.EmbeddingBag, "embedding_bag"),
        (nn.Embedding, "embedding"),
        (nn.Conv1d, "conv1d"),
        (nn.Conv2d, "conv2d"),
        (nn.Conv3d, "conv3d"),
    ]
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if id(m) not in mha_out_projs:
                kinds.add("linear")
            continue
        if type(m) is nn.RNN or (isinstance(m, nn.RNN) and not isinstance(m, (nn.LSTM, nn.GRU))):
            kinds.add("rnn")
            continue
        if hf_conv1d is not None and isinstance(m, hf_conv1d):
            kinds.add("hf_conv1d")
            continue
        for cls, kind in table:
            if isinstance(m, cls):
                kinds.add(kind)
                break
    return frozenset(kinds)


def torch_zoo() -> list[ZooEntry]:
    from .torch_models import torch_entries

    return torch_entries()


# CI sets it (.ci/run): there transformers is installed, so the HF zoo must not vanish.
REQUIRE_TRANSFORMERS_ENV_VAR = "QUANTCORE_REQUIRE_TRANSFORMERS"


def hf_zoo_unavailable() -> str | None:
    """Why the HF entries are missing (transformers not installed, or failing to import), or
    None when they are there. ``test_zoo_float`` turns a reason into a visible skip, or into a
    failure where transformers is installed or required."""
    try:
        import transformers  # noqa: F401
    except Exception as exc:
        return f"transformers cannot be imported ({type(exc).__name__}: {exc})"
    return None


def transformers_installed() -> bool:
    try:
        importlib.metadata.distribution("transformers")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def transformers_required() -> bool:
    return bool(os.environ.get(REQUIRE_TRANSFORMERS_ENV_VAR))


def hf_zoo() -> list[ZooEntry]:
    """HF transformers entries; [] when transformers is not importable (see
    hf_zoo_unavailable: a test reports it)."""
    if hf_zoo_unavailable() is not None:
        return []
    from .hf_models import hf_entries

    return hf_entries()


def all_zoo() -> list[ZooEntry]:
    return torch_zoo() + hf_zoo()


def get_entry(name: str) -> ZooEntry:
    for e in all_zoo():
        if e.name == name:
            return e
    raise KeyError(name)


__all__ = [
    "LAYER_KINDS",
    "ZooEntry",
    "scan_layer_kinds",
    "torch_zoo",
    "hf_zoo",
    "hf_zoo_unavailable",
    "all_zoo",
    "get_entry",
]
