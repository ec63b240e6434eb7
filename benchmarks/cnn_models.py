"""Convolutional models with the activation statistics of trained networks, for the accuracy
measurements of ``benchmarks.accuracy``.

Randomly initialized CNNs from Hugging Face configs (initializer_range 0.02) shrink their
activations layer after layer (the zoo's MobileNet-v2 outputs about 1e-27), which says nothing
about quantization. Here convolutions get He initialization and every BatchNorm learns its
running statistics from a few random batches (train mode, cumulative average), as in a trained
network whose normalizations see data: activations stay of order one through the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class CNN:
    name: str
    build: Callable[[], nn.Module]
    make_inputs: Callable[[int], dict[str, torch.Tensor]]  # seed -> keyword inputs of one batch
    output: str  # attribute of the model's output compared


def _init(model: nn.Module, inputs: Callable[[int], dict[str, torch.Tensor]]) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features**-0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for seed in range(4):
            model(**inputs(1000 + seed))
    return model.eval()


def _images(size: int) -> Callable[[int], dict[str, torch.Tensor]]:
    def make(seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"pixel_values": torch.randn(2, 3, size, size, generator=g)}

    return make


def _audio(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_values": torch.randn(2, 4000, generator=g)}


def _hf(config_name: str, model_name: str, inputs: Callable[[int], Any], **config: Any) -> Any:
    def build() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_name)(**config)
        torch.manual_seed(0)
        return _init(getattr(transformers, model_name)(cfg), inputs)

    return build


def cnn_models() -> list[CNN]:
    """MobileNet-v2, ResNet-18-like, ConvNeXt and wav2vec2 at small input sizes."""
    image = _images(64)
    return [
        CNN(
            "mobilenet_v2",
            _hf(
                "MobileNetV2Config",
                "MobileNetV2ForImageClassification",
                image,
                image_size=64,
                tf_padding=False,
                num_labels=100,
            ),
            image,
            "logits",
        ),
        CNN(
            "resnet18",
            _hf(
                "ResNetConfig",
                "ResNetForImageClassification",
                image,
                embedding_size=64,
                hidden_sizes=[64, 128, 256, 512],
                depths=[2, 2, 2, 2],
                layer_type="basic",
                num_labels=100,
            ),
            image,
            "logits",
        ),
        CNN(
            "convnext",
            _hf(
                "ConvNextConfig",
                "ConvNextForImageClassification",
                image,
                num_stages=4,
                hidden_sizes=[48, 96, 192, 384],
                depths=[2, 2, 2, 2],
                layer_scale_init_value=0.5,  # trained ConvNeXt scales are of this order, not 1e-6
                image_size=64,
                num_labels=100,
            ),
            image,
            "logits",
        ),
        CNN(
            "wav2vec2",
            _hf(
                "Wav2Vec2Config",
                "Wav2Vec2Model",
                _audio,
                hidden_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=256,
                conv_dim=(128, 128, 128),
                conv_stride=(5, 2, 2),
                conv_kernel=(10, 3, 3),
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=16,
            ),
            _audio,
            "last_hidden_state",
        ),
    ]
