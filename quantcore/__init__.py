"""quantcore: dynamic INT8 and FP16 quantization for any PyTorch model, extensible through plugins.

Users call :func:`quantize`. Plugin authors use :data:`hookimpl` and the registration records
(:class:`Scheme`, :class:`Observer`, :class:`LayerMapper`, :class:`InputAdapter`,
:class:`KernelBackend`); everything they need is importable from this package.
"""

from importlib_metadata import PackageNotFoundError, version

from quantcore.api import QuantizationResult, adapt_input, list_plugins, quantize
from quantcore.config import (
    CONFIG_ENV_VAR,
    ConfigFile,
    Override,
    QuantizeConfig,
    load_config,
    resolve_config,
)
from quantcore.context import ConversionContext
from quantcore.errors import (
    ConfigError,
    ConfigFileError,
    ConfigTypeError,
    ConfigValueError,
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
    UnknownConfigKeyError,
    UnknownObserverError,
    UnknownSchemeError,
    UnsupportedInputError,
    did_you_mean,
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
    "CONFIG_ENV_VAR",
    "DISABLE_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "ActivationSpec",
    "AdaptedInput",
    "ConfigError",
    "ConfigFile",
    "ConfigFileError",
    "ConfigTypeError",
    "ConfigValueError",
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
    "Override",
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
    "QuantizeConfig",
    "QuantizedWeight",
    "Registry",
    "Scheme",
    "UnknownConfigKeyError",
    "UnknownObserverError",
    "UnknownSchemeError",
    "UnsupportedInputError",
    "WeightSpec",
    "__version__",
    "adapt_input",
    "create_plugin_manager",
    "did_you_mean",
    "discover_plugins",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "load_config",
    "quantize",
    "resolve_config",
]
