"""Built-in input adapters: modules (unwrapping DataParallel and friends), state dicts (with
checkpoint recovery) and checkpoint files or folders given as a path. A third-party package adds
an adapter for its own format exactly the same way: a ``quantcore_input_adapters`` hook."""

from __future__ import annotations

from collections.abc import Iterator

from quantcore import plugin
from quantcore_adapters.files import adapt_path, explain_path, is_path
from quantcore_adapters.modules import adapt_module, is_module
from quantcore_adapters.state_dicts import (
    adapt_checkpoint_object,
    adapt_state_dict_object,
    explain_checkpoint,
    explain_state_dict,
    is_checkpoint,
    is_state_dict,
)


@plugin.hookimpl
def quantcore_input_adapters() -> Iterator[plugin.InputAdapter]:
    yield plugin.InputAdapter(
        name="module",
        accepts=is_module,
        adapt=adapt_module,
        priority=plugin.Priority.BUILTIN,
        description="a torch.nn.Module (DataParallel/DDP/torch.compile wrappers are unwrapped)",
    )
    yield plugin.InputAdapter(
        name="state_dict",
        accepts=is_state_dict,
        adapt=adapt_state_dict_object,
        priority=plugin.Priority.BUILTIN - 10,
        description="a state dict: a mapping of str names to tensors",
        explain=explain_state_dict,
    )
    yield plugin.InputAdapter(
        name="checkpoint",
        accepts=is_checkpoint,
        adapt=adapt_checkpoint_object,
        priority=plugin.Priority.BUILTIN - 20,
        description="a checkpoint dict holding the state dict under 'state_dict', "
        "'model_state_dict' or 'model'",
        explain=explain_checkpoint,
    )
    yield plugin.InputAdapter(
        name="file",
        accepts=is_path,
        adapt=adapt_path,
        priority=plugin.Priority.BUILTIN - 30,
        description="a path (str or pathlib.Path) to a .pt/.pth/.bin/.safetensors checkpoint, "
        "a *.index.json shard index, or a folder holding one",
        explain=explain_path,
    )
