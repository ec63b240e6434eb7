"""Hook specifications: the extension points a plugin can implement.

Each hook takes no arguments and returns (or yields) registration records; the kernel calls every
implementation separately so that a failure is attributed to the plugin that caused it.

A plugin module looks like::

    from quantcore import plugin

    @plugin.hookimpl
    def quantcore_schemes():
        yield plugin.Scheme(name="toy", ...)
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from quantcore.registrations import InputAdapter, KernelBackend, LayerMapper, Observer, Scheme

PROJECT_NAME = "quantcore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def quantcore_schemes() -> Iterable[Scheme]:  # type: ignore[empty-body]
    """Quantization schemes this plugin provides (selected with ``quantize(dtype=...)``)."""


@hookspec
def quantcore_observers() -> Iterable[Observer]:  # type: ignore[empty-body]
    """Observers that compute quantization parameters from tensors."""


@hookspec
def quantcore_layer_mappers() -> Iterable[LayerMapper]:  # type: ignore[empty-body]
    """Layer mappers that recognize layers and build their quantized replacements."""


@hookspec
def quantcore_input_adapters() -> Iterable[InputAdapter]:  # type: ignore[empty-body]
    """Input adapters that turn what a caller passes into a module or a state dict."""


@hookspec
def quantcore_kernel_backends() -> Iterable[KernelBackend]:  # type: ignore[empty-body]
    """Kernel backends that run quantized operations for a weight format."""


# hook name -> (registration kind used in messages, registration type)
HOOKS: dict[str, tuple[str, type]] = {
    "quantcore_schemes": ("scheme", Scheme),
    "quantcore_observers": ("observer", Observer),
    "quantcore_layer_mappers": ("layer mapper", LayerMapper),
    "quantcore_input_adapters": ("input adapter", InputAdapter),
    "quantcore_kernel_backends": ("kernel backend", KernelBackend),
}
