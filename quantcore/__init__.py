"""quantcore: dynamic INT8 and FP16 quantization for any PyTorch model, extensible through plugins.

Users call :func:`quantize`. Plugin authors use :data:`hookimpl` and the registration records
(:class:`Scheme`, :class:`Observer`, :class:`LayerMapper`, :class:`InputAdapter`,
:class:`KernelBackend`); everything they need is importable from this package.
"""

import warnings

with warnings.catch_warnings():
    # torch without NumPy installed warns "Failed to initialize NumPy" on import; quantcore
    # needs no NumPy, and the first line of `quantcore demo` should be quantcore's.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

from importlib_metadata import PackageNotFoundError, version

from quantcore.api import (
    QuantizationResult,
    adapt_input,
    attach_manifest,
    list_plugins,
    manifest_of,
    quantize,
)
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
from quantcore.context import ConversionContext
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
    LayerSkipped,
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
    did_you_mean,
)
from quantcore.graph_handles import call_in_graph, graph_handle, kernel_of_handle
from quantcore.hookspecs import hookimpl, hookspec
from quantcore.integrations import activate_integrations
from quantcore.manifest import FORMAT_VERSION, LayerRecord, Manifest, WeightRecord
from quantcore.modules import (
    DtypeTrackingModule,
    QuantizedContainer,
    QuantizedLinear,
    QuantizedModule,
    kernel_request,
    register_weight,
    select_kernel,
    track_dtype,
)
from quantcore.plugin_manager import (
    DISABLE_ENV_VAR,
    ENTRY_POINT_GROUP,
    PluginCandidate,
    PluginInfo,
    QuantcorePluginManager,
    create_plugin_manager,
    discover_plugins,
)
from quantcore.rebuild import RebuildContext, rebuild_layers
from quantcore.registrations import (
    AdaptedInput,
    InputAdapter,
    KernelBackend,
    KernelRequest,
    LayerMapper,
    Observer,
    PackedWeightKernel,
    Priority,
    Registry,
    Scheme,
    StateDictShard,
)
from quantcore.report import LayerReport, QuantizationReport
from quantcore.serialization import (
    CheckpointFile,
    QuantizedFile,
    load,
    quantize_to_file,
    read_checkpoint,
    read_index,
    read_quantized,
    save,
    shard_paths,
)
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
    "AccuracyError",
    "Batch",
    "Comparison",
    "ErrorStats",
    "compare",
    "load_inputs",
    "track_dtype",
    "select_kernel",
    "register_weight",
    "kernel_request",
    "QuantizedModule",
    "QuantizedLinear",
    "QuantizedContainer",
    "DtypeTrackingModule",
    "CONFIG_ENV_VAR",
    "DISABLE_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "FORMAT_VERSION",
    "ActivationSpec",
    "AdaptedInput",
    "ConfigError",
    "ConfigFile",
    "ConfigFileError",
    "ConfigTypeError",
    "ConfigValueError",
    "CheckpointError",
    "CheckpointFile",
    "ConversionContext",
    "Granularity",
    "IncompatibleFormatError",
    "InputAdapter",
    "InvalidRegistrationError",
    "KernelBackend",
    "KernelRequest",
    "PackedWeightKernel",
    "Priority",
    "LayerMapper",
    "LayerQuantizationError",
    "LayerRecord",
    "LayerReport",
    "LayerSkipped",
    "LayerSpec",
    "Manifest",
    "MissingDependencyError",
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
    "QuantizedFile",
    "QuantizedWeight",
    "RebuildContext",
    "Registry",
    "Scheme",
    "UnknownConfigKeyError",
    "SerializationError",
    "StateDictShard",
    "UnknownObserverError",
    "UnknownSchemeError",
    "UnsafeCheckpointError",
    "UnsupportedInputError",
    "WeightRecord",
    "WeightSpec",
    "__version__",
    "adapt_input",
    "attach_manifest",
    "call_in_graph",
    "create_plugin_manager",
    "did_you_mean",
    "discover_plugins",
    "graph_handle",
    "hookimpl",
    "hookspec",
    "kernel_of_handle",
    "list_plugins",
    "load_config",
    "quantize",
    "resolve_config",
    "load",
    "manifest_of",
    "quantize_to_file",
    "read_checkpoint",
    "read_index",
    "read_quantized",
    "rebuild_layers",
    "save",
    "shard_paths",
]

activate_integrations()
