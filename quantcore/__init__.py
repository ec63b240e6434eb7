"""quantcore: dynamic INT8 and FP16 quantization for any PyTorch model, extensible through plugins.

Users call :func:`quantize`. Plugin authors use :data:`hookimpl` and the registration records
(:class:`Scheme`, :class:`Observer`, :class:`LayerMapper`, :class:`InputAdapter`,
:class:`KernelBackend`); everything they need is importable from this package.
"""

from importlib_metadata import PackageNotFoundError, version

from quantcore.api import QuantizationResult, adapt_input, list_plugins, quantize
from quantcore.context import ConversionContext
from quantcore.errors import (
    InvalidRegistrationError,
    LayerQuantizationError,
    LayerSkipped,
    NothingToQuantizeError,
    PluginConflictError,
    PluginError,
    PluginLoadError,
    PluginLoadWarning,
    QuantcoreError,
    QuantcoreWarning,
    UnknownObserverError,
    UnknownSchemeError,
    UnsupportedInputError,
)
from quantcore.hookspecs import hookimpl, hookspec
from quantcore.plugin_manager import (
    DISABLE_ENV_VAR,
    ENTRY_POINT_GROUP,
    PluginCandidate,
    PluginInfo,
    QuantcorePluginManager,
    Registry,
    create_plugin_manager,
    discover_plugins,
)
from quantcore.registrations import (
    AdaptedInput,
    InputAdapter,
    KernelBackend,
    KernelRequest,
    LayerMapper,
    Observer,
    Scheme,
)
from quantcore.report import LayerReport, QuantizationReport
from quantcore.specs import (
    ActivationSpec,
    Granularity,
    LayerSpec,
    QuantizedWeight,
    QuantParams,
    WeightSpec,
)

try:
    __version__ = version("quantcore")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "DISABLE_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "ActivationSpec",
    "AdaptedInput",
    "ConversionContext",
    "Granularity",
    "InputAdapter",
    "InvalidRegistrationError",
    "KernelBackend",
    "KernelRequest",
    "LayerMapper",
    "LayerQuantizationError",
    "LayerReport",
    "LayerSkipped",
    "LayerSpec",
    "NothingToQuantizeError",
    "Observer",
    "PluginCandidate",
    "PluginConflictError",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "PluginLoadWarning",
    "QuantParams",
    "QuantcoreError",
    "QuantcorePluginManager",
    "QuantcoreWarning",
    "QuantizationReport",
    "QuantizationResult",
    "QuantizedWeight",
    "Registry",
    "Scheme",
    "UnknownObserverError",
    "UnknownSchemeError",
    "UnsupportedInputError",
    "WeightSpec",
    "__version__",
    "adapt_input",
    "create_plugin_manager",
    "discover_plugins",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "quantize",
]
