"""quantcore: dynamic INT8 and FP16 quantization for any PyTorch model, extensible through plugins.

Users call :func:`quantize`. Plugin authors use :data:`hookimpl` and the registration records
(:class:`Scheme`, :class:`Observer`, :class:`LayerMapper`, :class:`InputAdapter`,
:class:`KernelBackend`); everything they need is importable from this package.
"""

from importlib_metadata import PackageNotFoundError, version

from quantcore.api import QuantizationResult, adapt_input, list_plugins, manifest_of, quantize
from quantcore.context import ConversionContext
from quantcore.errors import (
    CheckpointError,
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
    UnknownObserverError,
    UnknownSchemeError,
    UnsafeCheckpointError,
    UnsupportedInputError,
)
from quantcore.hookspecs import hookimpl, hookspec
from quantcore.manifest import FORMAT_VERSION, LayerRecord, Manifest, WeightRecord
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
    StateDictShard,
)
from quantcore.report import LayerReport, QuantizationReport
from quantcore.serialization import (
    CheckpointFile,
    QuantizedFile,
    RebuildContext,
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
    "DISABLE_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "FORMAT_VERSION",
    "ActivationSpec",
    "AdaptedInput",
    "CheckpointError",
    "CheckpointFile",
    "ConversionContext",
    "Granularity",
    "IncompatibleFormatError",
    "InputAdapter",
    "InvalidRegistrationError",
    "KernelBackend",
    "KernelRequest",
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
    "QuantizedFile",
    "QuantizedWeight",
    "RebuildContext",
    "Registry",
    "Scheme",
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
    "create_plugin_manager",
    "discover_plugins",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "load",
    "manifest_of",
    "quantize",
    "quantize_to_file",
    "read_checkpoint",
    "read_index",
    "read_quantized",
    "save",
    "shard_paths",
]
