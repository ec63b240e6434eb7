"""quantcore: dynamic INT8 and FP16 quantization for any PyTorch model, extensible through plugins.

Users call :func:`quantize` (or :func:`quantize_to_file`), save and load what it returns, and read
the report; everything they need is importable from this package. Plugin authors use
:mod:`quantcore.plugin`: hook markers, registration records, the quantized-module runtime.
"""

from __future__ import annotations

import warnings
from typing import Any

with warnings.catch_warnings():
    # torch without NumPy installed warns "Failed to initialize NumPy" on import; quantcore
    # needs no NumPy, and the first line of `quantcore demo` should be quantcore's.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

from importlib_metadata import PackageNotFoundError, version

from quantcore import plugin
from quantcore.api import QuantizationResult, list_plugins, manifest_of, quantize
from quantcore.calibration import Batch, load_inputs
from quantcore.compare import Comparison, ErrorStats, compare
from quantcore.config import (
    CONFIG_ENV_VAR,
    ConfigFile,
    Override,
    QuantizeConfig,
    load_config,
    resolve_config,
)
from quantcore.errors import (
    AccuracyError,
    CheckpointError,
    ConfigError,
    ConfigFileError,
    ConfigTypeError,
    ConfigValueError,
    IncompatibleFormatError,
    InvalidRegistrationError,
    LayerQuantizationError,
    MissingDependencyError,
    NothingToQuantizeError,
    PluginConflictError,
    PluginError,
    PluginLoadError,
    PluginLoadWarning,
    QuantcoreError,
    QuantcoreWarning,
    SerializationError,
    UnknownConfigKeyError,
    UnknownObserverError,
    UnknownSchemeError,
    UnsafeCheckpointError,
    UnsupportedInputError,
)
from quantcore.integrations import activate_integrations
from quantcore.manifest import FORMAT_VERSION, LayerRecord, Manifest, WeightRecord
from quantcore.plugin_manager import (
    DISABLE_ENV_VAR,
    PluginInfo,
    QuantcorePluginManager,
    create_plugin_manager,
)
from quantcore.report import LayerReport, QuantizationReport
from quantcore.serialization import QuantizedFile, load, quantize_to_file, read_quantized, save
from quantcore.settings import QuantizeSettings

try:
    __version__ = version("quantcore")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AccuracyError",
    "Batch",
    "Comparison",
    "ErrorStats",
    "compare",
    "load_inputs",
    "CONFIG_ENV_VAR",
    "DISABLE_ENV_VAR",
    "FORMAT_VERSION",
    "CheckpointError",
    "ConfigError",
    "ConfigFile",
    "ConfigFileError",
    "ConfigTypeError",
    "ConfigValueError",
    "IncompatibleFormatError",
    "InvalidRegistrationError",
    "LayerQuantizationError",
    "LayerRecord",
    "LayerReport",
    "Manifest",
    "MissingDependencyError",
    "NothingToQuantizeError",
    "Override",
    "PluginConflictError",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "PluginLoadWarning",
    "QuantcoreError",
    "QuantcorePluginManager",
    "QuantcoreWarning",
    "QuantizationReport",
    "QuantizationResult",
    "QuantizeConfig",
    "QuantizeSettings",
    "QuantizedFile",
    "SerializationError",
    "UnknownConfigKeyError",
    "UnknownObserverError",
    "UnknownSchemeError",
    "UnsafeCheckpointError",
    "UnsupportedInputError",
    "WeightRecord",
    "__version__",
    "create_plugin_manager",
    "list_plugins",
    "load",
    "load_config",
    "manifest_of",
    "plugin",
    "quantize",
    "quantize_to_file",
    "read_quantized",
    "resolve_config",
    "save",
]


def __getattr__(name: str) -> Any:
    """Names that moved to :mod:`quantcore.plugin` still resolve here, with a warning."""
    if name in plugin.__all__:
        warnings.warn(
            f"quantcore.{name} is part of the plugin-author API: use quantcore.plugin.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(plugin, name)
    raise AttributeError(f"module 'quantcore' has no attribute {name!r}")


activate_integrations()
