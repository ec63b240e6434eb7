"""Activation fusion: which linear -> activation pairs are fused, that a fused layer computes what
the unfused pair computes (native epilogue and the layer's own fallback), and that fusion follows
the setting and survives copies, saving and loading."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import quantcore_native
import torch
import torch.nn.functional as F
from conftest import require_native_kernels
from torch import nn

import quantcore
from quantcore.plugin import FUSABLE_ACTIVATIONS, QuantizedLinear, recognize_activation

NATIVE = {"int8": "int8-linear-native", "fp16": "fp16-linear-native"}


class Block(nn.Module):
    """As Hugging Face's *Intermediate blocks: two statements."""

    def __init__(self, act: nn.Module, features: int = 37) -> None:
        super().__init__()
        self.dense = nn.Linear(24, features)
        self.intermediate_act_fn = act

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.intermediate_act_fn(hidden_states)
        return hidden_states


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(24, 16)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class Scaled(nn.Module):
    """Not act(linear(x)): the output is scaled after the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(24, 16)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        x = self.act(x) * 2
        return x


class Swapped(nn.Module):
    """The activation comes first: nothing to fuse."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(24, 24)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        x = self.fc(x)
        return x


class Chain(nn.Module):
    """As GPT-2's MLP: a chain of four statements."""

    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Linear(24, 48)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(48, 24)
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.c_fc(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.c_proj(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return hidden_states


class Mixed(nn.Module):
    """As Falcon's MLP: a nested call, then one more statement."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(24, 48)
        self.act = nn.ReLU()
        self.down = nn.Linear(48, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.up(x))
        x = self.down(x)
        return x


class Gated(nn.Module):
    """As LLaMA's MLP: the gate's activation is fused, the up projection's output is not."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(24, 40)
        self.up_proj = nn.Linear(24, 40)
        self.down_proj = nn.Linear(40, 24)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return down_proj


class Reused(nn.Module):
    """One child called twice: not a chain of distinct children."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(24, 24)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        x = self.act(x)
        x = self.fc(x)
        return x


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(24, 24)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        x = self.fc(x)
        x = self.act(x)
        return x


class QuickGelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(24, 48), nn.GELU(), nn.Linear(48, 37), nn.ReLU(), nn.Linear(37, 8)
    ).eval()


def _quantize(
    model: nn.Module, dtype: str = "int8", **kwargs: object
) -> quantcore.QuantizationResult:
    result = quantcore.quantize(model, dtype, **kwargs)  # type: ignore[arg-type]
    assert result.module is not None
    return result


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(x)
        return out


# --------------------------------------------------------------------- what is recognized


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (nn.GELU(), "gelu"),
        (nn.GELU(approximate="tanh"), "gelu_tanh"),
        (nn.ReLU(), "relu"),
        (nn.Tanh(), None),
        (nn.SiLU(), "silu"),
        (nn.Sigmoid(), None),
        (QuickGelu(), None),
        (nn.Identity(), None),
        (nn.PReLU(init=0.0), None),  # computes relu at this init, but has a parameter
        (nn.Sequential(nn.ReLU()), None),  # not a leaf
    ],
)
def test_activations_are_recognized_by_what_they_compute(
    module: nn.Module, name: str | None
) -> None:
    assert recognize_activation(module) == name


def test_hugging_face_mlp_blocks_are_fused() -> None:
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16)
    model = transformers.GPT2Model(gpt2).eval()
    module = _quantize(model).module
    assert module is not None
    assert module.h[0].mlp.c_fc.fused_activation == "gelu_tanh"
    assert isinstance(module.h[0].mlp.act, nn.Identity)
    ids = torch.randint(0, 64, (2, 8))
    unfused = _quantize(model, fuse_activations=False).module
    assert unfused is not None
    with torch.no_grad():
        got, expected = module(ids).last_hidden_state, unfused(ids).last_hidden_state
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_hugging_face_activations_are_recognized() -> None:
    activations = pytest.importorskip("transformers.activations")
    assert recognize_activation(activations.GELUActivation()) == "gelu"
    assert recognize_activation(activations.NewGELUActivation()) == "gelu_tanh"
    assert recognize_activation(activations.FastGELUActivation()) == "gelu_tanh"
    assert recognize_activation(activations.QuickGELUActivation()) is None


def test_sequential_pairs_are_fused_and_reported() -> None:
    model = _mlp()
    result = _quantize(model)
    module = result.module
    assert module is not None
    assert isinstance(module[1], nn.Identity) and isinstance(module[3], nn.Identity)
    assert [module[i].fused_activation for i in (0, 2, 4)] == ["gelu", "relu", None]
    notes = {layer.name: layer.notes for layer in result.report.layers}
    assert any("gelu" in note and "fused" in note for note in notes["0"])
    assert not any("fused" in note for note in notes["4"])
    assert "activation=gelu" in repr(module[0])
    assert isinstance(model[1], nn.GELU)  # the caller's model is untouched


@pytest.mark.parametrize(
    ("model", "fused"),
    [
        (Block(nn.GELU()), {"dense": "gelu"}),
        (Nested(), {"fc": "relu"}),
        (Chain(), {"c_fc": "gelu_tanh"}),
        (Mixed(), {"up": "relu"}),
        (Gated(), {"gate_proj": "silu"}),
        (Scaled(), {}),
        (Swapped(), {}),
        (Reused(), {}),
        (TwoInputs(), {}),
        (Block(nn.Tanh()), {}),
    ],
)
def test_only_a_forward_that_passes_x_through_children_is_fused(
    model: nn.Module, fused: dict[str, str]
) -> None:
    module = _quantize(model.eval()).module
    assert module is not None
    got = {
        name: m.fused_activation
        for name, m in module.named_modules()
        if isinstance(m, QuantizedLinear) and m.fused_activation is not None
    }
    assert got == fused
    x = torch.randn(5, 24)
    unfused = _quantize(model, fuse_activations=False).module
    assert unfused is not None
    assert torch.allclose(_run(module, x), _run(unfused, x), rtol=1e-5, atol=1e-5)


def test_excluded_hooked_or_shared_layers_are_not_fused() -> None:
    model = _mlp()
    excluded = _quantize(model, exclude=["0"]).module
    assert excluded is not None
    assert isinstance(excluded[1], nn.GELU)  # its linear stayed float

    hooked = _mlp()
    hooked[2].register_forward_hook(lambda m, i, o: None)  # a hook must see the linear's output
    module = _quantize(hooked).module
    assert module is not None
    assert isinstance(module[3], nn.ReLU) and module[2].fused_activation is None

    shared = nn.Linear(24, 24)
    twice = nn.Sequential(shared, nn.ReLU(), shared).eval()  # one layer used in two places
    module = _quantize(twice).module
    assert module is not None
    assert isinstance(module[1], nn.ReLU)


def test_the_setting_turns_fusion_off_everywhere() -> None:
    model = _mlp()
    off = _quantize(model, fuse_activations=False)
    assert off.module is not None
    assert isinstance(off.module[1], nn.GELU)
    assert off.report.config is not None and off.report.config.fuse_activations is False
    from_file = _quantize(model, config={"fuse_activations": False})
    assert from_file.module is not None and isinstance(from_file.module[1], nn.GELU)
    with pytest.raises(quantcore.ConfigError, match="fuse_activations"):
        _quantize(model, config={"fuse_activations": "yes"})


# --------------------------------------------------------------------- what a fused layer computes


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize("activation", sorted(FUSABLE_ACTIVATIONS))
@pytest.mark.parametrize("tokens", [1, 5, 300])
def test_the_native_epilogue_computes_the_activation(
    dtype: str, activation: str, tokens: int
) -> None:
    require_native_kernels()
    torch.manual_seed(1)
    layer = _quantize(nn.Sequential(nn.Linear(24, 37)).eval(), dtype).module
    assert layer is not None
    linear = layer[0]
    assert linear.kernel_name == NATIVE[dtype]
    x = torch.randn(tokens, 24) * 3
    plain = _run(linear, x)
    linear.fuse_activation(activation)
    assert linear.kernel_name == NATIVE[dtype]
    fused = _run(linear, x)
    expected = FUSABLE_ACTIVATIONS[activation](plain)
    assert torch.allclose(fused, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused, plain)  # the activation did something
    # with gradients the layer runs torch's math, activation included
    x.requires_grad_(True)
    differentiable = linear(x)
    assert torch.allclose(differentiable.detach(), fused, rtol=1e-3, atol=1e-3)
    linear.fuse_activation(None)
    assert torch.equal(_run(linear, x.detach()), plain)


def test_a_kernel_that_cannot_fuse_leaves_the_activation_to_the_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quantcore_native, "available", lambda: False)
    model = _mlp()
    module = _quantize(model).module
    assert module is not None
    assert module[0].fused_activation == "gelu"
    assert "native" not in module[0].kernel_name
    x = torch.randn(6, 24)
    unfused = _quantize(model, fuse_activations=False).module
    assert unfused is not None
    assert torch.equal(_run(module, x), _run(unfused, x))


def test_unknown_activation_names_are_refused() -> None:
    module = _quantize(_mlp()).module
    assert module is not None
    with pytest.raises(ValueError, match="fusable ones are"):
        module[4].fuse_activation("swish")


# --------------------------------------------------------------------- copies, files


def test_fusion_survives_copies(tmp_path: Path) -> None:
    module = _quantize(_mlp()).module
    assert module is not None
    x = torch.randn(4, 24)
    expected = _run(module, x)
    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert copied[0].fused_activation == "gelu"
        assert isinstance(copied[1], nn.Identity)
        assert torch.equal(_run(copied, x), expected)


def test_loading_a_saved_model_fuses_again(tmp_path: Path) -> None:
    model = _mlp()
    result = _quantize(model)
    assert result.module is not None
    path = quantcore.save(result, tmp_path / "mlp.safetensors")
    # the file holds the same tensors with or without fusion
    unfused = _quantize(model, fuse_activations=False)
    assert set(unfused.state_dict) == set(result.state_dict)
    x = torch.randn(4, 24)
    loaded = quantcore.load(path, _mlp())
    assert loaded[0].fused_activation == "gelu" and isinstance(loaded[1], nn.Identity)
    assert torch.equal(_run(loaded, x), _run(result.module, x))
    plain = quantcore.load(path, _mlp(), fuse_activations=False)
    assert isinstance(plain[1], nn.GELU)
    assert torch.allclose(_run(plain, x), _run(loaded, x), rtol=1e-5, atol=1e-5)


def test_relu_keeps_nan_as_torch_does() -> None:
    require_native_kernels()
    layer = _quantize(nn.Sequential(nn.Linear(4, 3)).eval(), "fp16").module
    assert layer is not None
    layer[0].fuse_activation("relu")
    out = _run(layer, torch.tensor([[float("nan"), 1.0, 2.0, 3.0]]))
    assert torch.isnan(out).all()
    assert F.relu(torch.tensor(float("nan"))).isnan()
