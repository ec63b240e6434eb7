"""quantcore for plugin authors: everything a plugin needs, in one namespace (``quantcore`` itself
is the users' API).

A plugin module implements hooks and yields registration records::

    from quantcore import plugin

    @plugin.hookimpl
    def quantcore_schemes():
        yield plugin.Scheme(name="toy", ...)

Here are the hook markers and the records (:class:`Scheme`, :class:`Observer`,
:class:`LayerMapper`, :class:`InputAdapter`, :class:`KernelBackend` and what they exchange), the
spec vocabulary and the affine quantization functions any format can share, what a mapper gets
for one layer (:class:`ConversionContext`), the quantized-module runtime a mapper builds its
layers on (:class:`QuantizedModule`, :class:`QuantizedLinear`, ...), ``torch.compile`` support for
kernels, checkpoint reading for input adapters, the errors a plugin raises, and the plugin
manager for testing a plugin in-process. docs/plugins.md describes them.
"""

from quantcore.affine import (
    affine_params,
    dequantize_affine,
    expand_params,
    group_view,
    quantize_affine,
)
from quantcore.checkpoints import CheckpointFile, read_checkpoint, read_index, shard_paths
from quantcore.context import ConversionContext, SharedState
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
from quantcore.fusion import fuse_activations, recognize_activation
from quantcore.graph_handles import call_in_graph, graph_handle, kernel_of_handle
from quantcore.hookspecs import HOOKS, hookimpl, hookspec
from quantcore.job import adapt_input
from quantcore.manifest import attach_manifest
from quantcore.modules import (
    FUSABLE_ACTIVATIONS,
    DtypeTrackingModule,
    QuantizedContainer,
    QuantizedLinear,
    QuantizedModule,
    kernel_names,
    kernel_request,
    register_weight,
    select_kernel,
    track_dtype,
    weak_call,
)
from quantcore.plugin_manager import (
    ENTRY_POINT_GROUP,
    PluginCandidate,
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
from quantcore.specs import (
    ActivationSpec,
    Granularity,
    LayerSpec,
    QuantizedWeight,
    QuantParams,
    WeightSpec,
)

__all__ = [
    "AccuracyError",
    "ENTRY_POINT_GROUP",
    "FUSABLE_ACTIVATIONS",
    "HOOKS",
    "ActivationSpec",
    "AdaptedInput",
    "CheckpointFile",
    "ConversionContext",
    "DtypeTrackingModule",
    "Granularity",
    "InputAdapter",
    "KernelBackend",
    "KernelRequest",
    "LayerMapper",
    "LayerSpec",
    "Observer",
    "PackedWeightKernel",
    "PluginCandidate",
    "Priority",
    "QuantParams",
    "QuantcorePluginManager",
    "QuantizedContainer",
    "QuantizedLinear",
    "QuantizedModule",
    "QuantizedWeight",
    "RebuildContext",
    "Registry",
    "Scheme",
    "SharedState",
    "StateDictShard",
    "WeightSpec",
    "adapt_input",
    "attach_manifest",
    "quantize_affine",
    "group_view",
    "expand_params",
    "dequantize_affine",
    "affine_params",
    "call_in_graph",
    "create_plugin_manager",
    "discover_plugins",
    "graph_handle",
    "hookimpl",
    "hookspec",
    "kernel_names",
    "kernel_of_handle",
    "kernel_request",
    "read_checkpoint",
    "read_index",
    "rebuild_layers",
    "register_weight",
    "select_kernel",
    "shard_paths",
    "track_dtype",
    "CheckpointError",
    "ConfigError",
    "ConfigFileError",
    "ConfigTypeError",
    "ConfigValueError",
    "IncompatibleFormatError",
    "InvalidRegistrationError",
    "LayerQuantizationError",
    "LayerSkipped",
    "MissingDependencyError",
    "NothingToQuantizeError",
    "PluginConflictError",
    "PluginError",
    "PluginLoadError",
    "PluginLoadWarning",
    "QuantcoreError",
    "QuantcoreWarning",
    "SerializationError",
    "UnknownConfigKeyError",
    "UnknownObserverError",
    "UnknownSchemeError",
    "UnsafeCheckpointError",
    "UnsupportedInputError",
    "did_you_mean",
    "fuse_activations",
    "recognize_activation",
    "weak_call",
]
