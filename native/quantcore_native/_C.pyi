"""Types of the compiled module built from native/csrc (see csrc/ops.cpp)."""

import torch

def torch_version() -> str: ...
def cpu_supported() -> bool: ...
def vector_isa() -> str: ...

class NativeLinear:
    @property
    def in_features(self) -> int: ...
    @property
    def out_features(self) -> int: ...

class Int8Linear(NativeLinear):
    def __init__(
        self,
        weight: torch.Tensor,
        scales: torch.Tensor,
        bits: int,
        symmetric: bool,
    ) -> None: ...
    def unpack(self) -> torch.Tensor: ...
    @property
    def on_huge_pages(self) -> bool: ...

class Fp16Linear(NativeLinear):
    def __init__(self, weight: torch.Tensor) -> None: ...
    def unpack(self) -> torch.Tensor: ...

def linear(
    x: torch.Tensor, packed: NativeLinear, bias: torch.Tensor | None, activation: int = 0
) -> torch.Tensor: ...
def embedding(
    table: torch.Tensor,
    scale: torch.Tensor | None,
    zero_point: torch.Tensor | None,
    input: torch.Tensor,
    max_norm: float,
    norm_type: float,
) -> torch.Tensor: ...
def embedding_bag(
    table: torch.Tensor,
    scale: torch.Tensor | None,
    zero_point: torch.Tensor | None,
    input: torch.Tensor,
    offsets: torch.Tensor | None,
    per_sample_weights: torch.Tensor | None,
    mode: int,
    include_last_offset: bool,
    padding_idx: int,
    max_norm: float,
    norm_type: float,
) -> torch.Tensor: ...

class Recurrent:
    def __init__(
        self, mode: str, hidden_size: int, num_layers: int, bidirectional: bool
    ) -> None: ...
    def add_cell(
        self,
        ih: NativeLinear,
        hh: NativeLinear,
        bias_ih: torch.Tensor | None,
        bias_hh: torch.Tensor | None,
    ) -> None: ...
    def add_projection(self, hr: NativeLinear) -> None: ...
    def forward(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
