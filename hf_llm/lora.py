"""LoRA written from scratch, with PEFT's module layout and on-disk format.

Low-Rank Adaptation (Hu et al., 2021) fine-tunes a frozen linear layer `W x + b` by learning a
low-rank update beside it:

    y = W x + b + (alpha / r) * B A dropout(x)

where A is (r, in_features) and B is (out_features, r), with r much smaller than either side.
Only A and B are trained: for GPT-2 124M with r=4 on `c_attn`, that is 147,456 parameters out of
124.6 million. B starts at zero, so the adapted model starts out exactly equal to the base model;
A starts random, so B gets a useful gradient from the first step.

This module builds that by hand and keeps PEFT's naming, so the two are interchangeable:

* `LoRALinear` wraps an `nn.Linear` as `base_layer` and keeps each named adapter's A and B in
  `lora_A` / `lora_B` ModuleDicts, giving state-dict keys `...c_attn.base_layer.weight` and
  `...c_attn.lora_A.default.weight`, exactly as a PEFT model has them.
* `inject_lora` swaps matching `nn.Linear` modules for `LoRALinear` in place (targets matched
  the way PEFT's `target_modules` are) and freezes everything but the new adapter.
* `set_adapter`, `disable_adapters`, `merge_lora`, `unmerge_lora`, `unload_lora` and
  `merge_and_unload_lora` switch, bypass, fold in and remove adapters.
* `save_adapter` / `load_adapter` read and write PEFT's folder format (`adapter_config.json` +
  `adapter_model.safetensors`), so an adapter trained here loads with
  `PeftModel.from_pretrained` and the other way round, including modules trained in full beside
  the adapter (`modules_to_save`, such as a reward model's `score` head).
* `trainable_parameters` / `print_trainable_parameters` count as PEFT does.

Only plain LoRA on `nn.Linear` is implemented: no DoRA, no LoRA on embeddings or convolutions,
no per-layer ranks (`rank_pattern`), no trained biases. Loading an adapter that uses one of those
raises a ValueError saying which.

Example:

```python
>>> from hf_llm import GPTConfig, GPTForCausalLM
>>> from hf_llm.lora import LoRASettings, inject_lora, print_trainable_parameters, save_adapter
>>> model = GPTForCausalLM(GPTConfig(n_embd=64, n_layer=2, n_head=4, vocab_size=100))
>>> model = inject_lora(model, ["c_attn"], LoRASettings(r=4, alpha=8))
>>> print_trainable_parameters(model)
trainable params: 2,048 || all params: 174,080 || trainable%: 1.1765
```
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .folders import write_folder_atomically

# PEFT's file names and the prefix of every key in its adapter files (a PeftModel holds a LoraModel
# as `base_model`, which holds the transformers model as `model`).
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_WEIGHTS_NAME_PT = "adapter_model.bin"  # older PEFT versions wrote pickles
PEFT_KEY_PREFIX = "base_model.model."

# Book-keeping that inject_lora leaves on the model: the adapters' settings (for save_adapter) and
# the parameters' requires_grad before freezing (for unload_lora).
_STATE_ATTR = "_hf_llm_lora"


# --------------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------------


def _check_adapter_name(name: str) -> None:
    # Adapter names become ModuleDict keys, which cannot contain dots or be empty.
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"Adapter name must be a non-empty string without dots, got {name!r}.")


@dataclass(frozen=True)
class LoRASettings:
    """One adapter's settings: what PEFT's `LoraConfig` calls `r`, `lora_alpha`, `lora_dropout`,
    `init_lora_weights` and `use_rslora`. Checked when made, so a bad value fails before any layer changes.

    Args:
        r: rank of the update (A is (r, in_features), B is (out_features, r)).
        alpha: scale numerator; the update is multiplied by `alpha / r` (or `alpha / sqrt(r)` with
            `use_rslora=True`), so changing r does not change the update's size at init.
        dropout: dropout on the adapter's input only (the base path sees `x` unchanged).
        init_lora_weights: `True` (default): A kaiming-uniform(a=sqrt(5)), B zeros, so the layer
            starts equal to the base layer. `"gaussian"`: A ~ N(0, 1/r), B zeros. `False`: both
            keep `nn.Linear`'s random init, so the adapter changes outputs from the start (useful
            in tests, where a zero B would hide mistakes).
        use_rslora: scale by `alpha / sqrt(r)` (rank-stabilised LoRA) instead of `alpha / r`.
    """

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    init_lora_weights: bool | str = True
    use_rslora: bool = False

    def __post_init__(self):
        r, alpha, dropout, init = self.r, self.alpha, self.dropout, self.init_lora_weights
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}.")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
            raise ValueError(f"LoRA alpha must be a number, got {alpha!r}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}.")
        if init not in (True, False) and not (isinstance(init, str) and init.lower() == "gaussian"):
            raise ValueError(f"init_lora_weights must be True, False or 'gaussian', got {init!r}.")

    @property
    def scaling(self) -> float:
        """The factor on `B A x`: `alpha / r`, or `alpha / sqrt(r)` with rank-stabilised LoRA."""
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r


def _check_settings(settings) -> None:
    if not isinstance(settings, LoRASettings):
        raise TypeError(f"settings must be a LoRASettings, got {type(settings).__name__}: LoRASettings(r=..., alpha=...).")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus one or more named low-rank adapters; at most one is active.

    Output: `base_layer(x) + lora_B(lora_A(dropout(x))) * alpha / r` for the active adapter.

    Args:
        base_layer: the linear layer to adapt. It is kept as `self.base_layer` and frozen.
        settings: the first adapter's rank, alpha, dropout and initialisation (`LoRASettings`).
        adapter_name: name of the first adapter.

    Adapter weights live on the base weight's device, in its dtype, except that a float16 or
    bfloat16 base gets float32 adapters (as PEFT does by default): the few trained weights keep
    full precision, and the input is cast to their dtype on the way in.

    `weight`, `bias`, `in_features` and `out_features` read through to the base layer, so code that
    inspects `module.weight` keeps working after the layer is wrapped.
    """

    def __init__(self, base_layer: nn.Linear, settings: LoRASettings = LoRASettings(), adapter_name: str = "default"):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base_layer).__name__}.")
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        # One entry per adapter name. Dropout is a module (it has a training mode); r, alpha and the
        # scaling are plain numbers, so ordinary dicts.
        self.lora_dropout = nn.ModuleDict()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.active_adapter: str | None = None
        self.disabled = False  # set by disable_adapters(): forward returns base_layer(x)
        self.merged_adapter: str | None = None  # the adapter folded into base_layer.weight, if any
        self._weight_before_merge: torch.Tensor | None = None
        self.add_adapter(adapter_name, settings)
        self.set_adapter(adapter_name)

    # The base layer's attributes, so `module.weight` etc. still mean the linear map's weight.
    @property
    def weight(self) -> nn.Parameter:
        return self.base_layer.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def adapter_names(self) -> list[str]:
        """Names of the adapters this layer holds."""
        return list(self.lora_A.keys())

    def add_adapter(self, name: str, settings: LoRASettings) -> None:
        """Add a new adapter (inactive until `set_adapter(name)`) with these settings."""
        _check_adapter_name(name)
        _check_settings(settings)
        r = settings.r
        if name in self.lora_A:
            raise ValueError(f"This layer already has an adapter named {name!r}; choose another adapter_name.")
        weight = self.base_layer.weight
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        lora_A = nn.Linear(self.in_features, r, bias=False, device=weight.device, dtype=dtype)
        lora_B = nn.Linear(r, self.out_features, bias=False, device=weight.device, dtype=dtype)
        if settings.init_lora_weights is not False:
            if settings.init_lora_weights is True:
                # nn.Linear's own init (as in the LoRA paper's reference code).
                nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5))
            else:  # "gaussian"
                nn.init.normal_(lora_A.weight, std=1.0 / r)
            # B = 0 makes B A = 0: the adapted layer starts exactly equal to the base layer.
            nn.init.zeros_(lora_B.weight)
        self.lora_A[name] = lora_A
        self.lora_B[name] = lora_B
        self.lora_dropout[name] = nn.Dropout(settings.dropout) if settings.dropout > 0 else nn.Identity()
        self.r[name] = r
        self.lora_alpha[name] = settings.alpha
        self.use_rslora[name] = bool(settings.use_rslora)
        self.scaling[name] = settings.scaling

    def set_adapter(self, name: str, trainable: bool = True) -> None:
        """Make `name` the active adapter: only its A and B can require grad (if `trainable`).

        A layer without an adapter of that name simply runs without one. A merged layer is
        unmerged first, since the merged weight belongs to the previous adapter.
        """
        if self.merged_adapter is not None and self.merged_adapter != name:
            warnings.warn(f"Unmerging adapter {self.merged_adapter!r} before switching to {name!r}.", stacklevel=2)
            self.unmerge()
        self.active_adapter = name
        for adapter in self.lora_A:
            is_on = trainable and adapter == name
            self.lora_A[adapter].requires_grad_(is_on)
            self.lora_B[adapter].requires_grad_(is_on)

    def delta_weight(self, name: str) -> torch.Tensor:
        """The adapter's update to the weight, `(B @ A) * scaling`, shaped like `base_layer.weight`."""
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]

    @torch.no_grad()
    def merge(self, keep_original: bool = True) -> None:
        """Fold the active adapter into `base_layer.weight`, so forward costs one matmul again.

        With `keep_original` (the default) a copy of the weight is kept so that `unmerge` restores
        it bit for bit: subtracting the update again would leave rounding errors. That copy costs
        the memory of one weight per wrapped layer, until `unmerge`.
        """
        if self.merged_adapter is not None:
            warnings.warn(f"Adapter {self.merged_adapter!r} is already merged; nothing to do.", stacklevel=2)
            return
        name = self.active_adapter
        if name not in self.lora_A:
            return
        weight = self.base_layer.weight
        if keep_original:
            self._weight_before_merge = weight.detach().clone()
        # Added in the update's precision and rounded once to the weight's dtype, as PEFT merges.
        weight += self.delta_weight(name)
        self.merged_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge`: `base_layer.weight` is the original weight again."""
        if self.merged_adapter is None:
            return
        weight = self.base_layer.weight
        if self._weight_before_merge is not None:
            weight.copy_(self._weight_before_merge)
        else:  # merged with keep_original=False: the best we can do is subtract
            weight -= self.delta_weight(self.merged_adapter)
        self._weight_before_merge = None
        self.merged_adapter = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled and self.merged_adapter is not None:
            self.unmerge()  # a disabled layer must compute with the base weight
        result = self.base_layer(x)
        name = self.active_adapter
        if self.disabled or self.merged_adapter is not None or name not in self.lora_A:
            return result
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        result_dtype = result.dtype  # float32 adapters on a half-precision base must not upcast the output
        x = x.to(lora_A.weight.dtype)
        result = result + lora_B(lora_A(self.lora_dropout[name](x))) * self.scaling[name]
        return result.to(result_dtype)

    def extra_repr(self) -> str:
        adapters = ", ".join(f"{n}(r={self.r[n]}, alpha={self.lora_alpha[n]})" for n in self.lora_A)
        return f"adapters=[{adapters}], active={self.active_adapter!r}, merged={self.merged_adapter is not None}"


# --------------------------------------------------------------------------------------------------
# Putting adapters into a model
# --------------------------------------------------------------------------------------------------


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every `LoRALinear` in the model, by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def adapter_names(model: nn.Module) -> list[str]:
    """Names of all adapters in the model, in the order they were added."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.adapter_names))
    return list(names)


def _modules_outside_lora(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # A LoRALinear's own children (base_layer, lora_A.default, ...) are not targets themselves.
    lora_prefixes: list[str] = []
    for name, module in model.named_modules():
        if name and any(name.startswith(prefix + ".") for prefix in lora_prefixes):
            continue
        if isinstance(module, LoRALinear):
            lora_prefixes.append(name)
        yield name, module


def _is_target(name: str, target_modules: str | Sequence[str]) -> bool:
    """PEFT's rule: a string is a regex that must match the whole module name; a list entry
    matches a name equal to it or ending in `.` + it (so `c_proj` hits `attn.c_proj` and
    `mlp.c_proj`, and `attn.c_proj` only the first)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith("." + target) for target in target_modules)


def find_modules_to_save(
    model: nn.Module, modules_to_save: Sequence[str] | None, require_match: bool = False
) -> dict[str, nn.Module]:
    """The modules `modules_to_save` names (PEFT's list rule: the name or its `.`-suffix), outermost only.

    Names that match nothing are skipped, as PEFT does (its classification tasks add `classifier`
    and `score` to the list whatever the model has); with `require_match`, a non-empty list that
    matches no module at all raises ValueError.
    """
    found: dict[str, nn.Module] = {}
    for name, module in _modules_outside_lora(model):
        if name and _is_target(name, list(modules_to_save or ())) and not any(name.startswith(f + ".") for f in found):
            found[name] = module
    if require_match and modules_to_save and not found:
        raise ValueError(f"modules_to_save {list(modules_to_save)} matches no module of {type(model).__name__}.")
    return found


def _linear_names_hint(model: nn.Module) -> str:
    names = [name for name, module in _modules_outside_lora(model) if isinstance(module, (nn.Linear, LoRALinear))]
    if not names:
        return f"{type(model).__name__} has no nn.Linear modules."
    short = sorted({name.rsplit(".", 1)[-1] for name in names})
    return f"Linear modules in {type(model).__name__}: {', '.join(short)} (full names like {names[0]!r})."


# Names of sequence-classification heads, which "all-linear" leaves alone (PEFT's list).
CLASSIFIER_HEAD_NAMES = ("score", "classifier")


def find_target_modules(
    model: nn.Module, target_modules: str | Sequence[str], require_every_target: bool = True
) -> dict[str, nn.Module]:
    """The modules `target_modules` selects, by name; a ValueError if a target matches nothing
    or matches something other than a linear layer.

    `target_modules` is a list of names (matched against the end of module names), a regex string
    (matched against whole module names), or `"all-linear"`: every linear layer except the output
    head and, in a sequence classifier, its head. With `require_every_target=False` a list only
    needs one name that matches (PEFT's rule, used when loading a saved adapter).
    """
    if isinstance(target_modules, str) and target_modules.lower() == "all-linear":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        # As PEFT: the output head stays as it is, and so does a classifier's head (trained in full,
        # if at all, through modules_to_save).
        classifier = type(model).__name__.endswith("ForSequenceClassification")
        found = {
            name: module
            for name, module in _modules_outside_lora(model)
            if isinstance(module, (nn.Linear, LoRALinear))
            and module is not head
            and not (classifier and name.rsplit(".", 1)[-1] in CLASSIFIER_HEAD_NAMES)
        }
        if not found:
            raise ValueError(f"target_modules='all-linear' matched nothing. {_linear_names_hint(model)}")
        return found
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
        if not target_modules:
            raise ValueError(f"target_modules is empty. {_linear_names_hint(model)}")

    found = {name: module for name, module in _modules_outside_lora(model) if name and _is_target(name, target_modules)}
    if isinstance(target_modules, str):
        missing = [target_modules] if not found else []
    else:
        missing = [t for t in target_modules if not any(_is_target(name, [t]) for name in found)]
        if not require_every_target and found:
            missing = []
    if missing:
        raise ValueError(f"LoRA target module(s) {missing} not found in the model. {_linear_names_hint(model)}")
    wrong = {name: type(m).__name__ for name, m in found.items() if not isinstance(m, (nn.Linear, LoRALinear))}
    if wrong:
        raise ValueError(
            f"LoRA here adapts nn.Linear layers only, but target_modules={target_modules!r} also matched "
            f"{wrong}. Name the linear layers themselves. {_linear_names_hint(model)}"
        )
    return found


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new)


def _state(model: nn.Module) -> dict:
    if not hasattr(model, _STATE_ATTR):
        setattr(model, _STATE_ATTR, {"adapters": {}, "requires_grad": None})
    return getattr(model, _STATE_ATTR)


def inject_lora(
    model: nn.Module,
    target_modules: str | Sequence[str],
    settings: LoRASettings = LoRASettings(),
    adapter_name: str = "default",
    modules_to_save: Sequence[str] | None = None,
    require_every_target: bool = True,
) -> nn.Module:
    """Add a LoRA adapter with these `settings` to the model's matching linear layers, in place, and
    return the model.

    Each `nn.Linear` that `target_modules` selects (see `find_target_modules`) is replaced by a
    `LoRALinear` around it; a layer that already is one gets a further adapter. Afterwards every
    parameter of the model is frozen except the new adapter's A and B and the parameters of the
    modules named in `modules_to_save` (e.g. a classifier head such as `score`, trained in full and
    saved with the adapter), and the new adapter is the active one (unlike PEFT's `add_adapter`,
    which leaves the old one active: here the adapter you just added is the one you are about to
    train). `set_adapter` switches back. Unlike PEFT, which trains a copy of each module to save,
    those modules are trained in place: disabling or unloading the adapter does not restore them.

    Raises ValueError, before changing anything, when a target matches no module (with
    `require_every_target=False`: when no target matches any) or a non-linear one, when no module
    matches `modules_to_save`, or when the adapter name is already in use.
    """
    _check_adapter_name(adapter_name)
    _check_settings(settings)
    if isinstance(model, LoRALinear) or type(model) is nn.Linear:
        raise ValueError("inject_lora adapts layers inside a model; wrap a lone nn.Linear with LoRALinear(layer, ...).")
    targets = find_target_modules(model, target_modules, require_every_target)
    taken = [name for name, m in targets.items() if isinstance(m, LoRALinear) and adapter_name in m.lora_A]
    if taken:
        raise ValueError(f"Adapter {adapter_name!r} already exists on {taken[:3]}...; choose another adapter_name.")
    saved_modules = find_modules_to_save(model, modules_to_save, require_match=True)

    state = _state(model)
    if state["requires_grad"] is None:
        # Remember who was trainable before the first adapter, so unload_lora can put it back.
        state["requires_grad"] = {name: p.requires_grad for name, p in model.named_parameters()}

    for name, module in targets.items():
        if isinstance(module, LoRALinear):
            module.add_adapter(adapter_name, settings)
        else:
            _replace_module(model, name, LoRALinear(module, settings, adapter_name))
    state["adapters"][adapter_name] = dict(
        asdict(settings), target_modules=target_modules, modules_to_save=list(modules_to_save) if modules_to_save else None
    )

    model.requires_grad_(False)
    set_adapter(model, adapter_name)
    for module in saved_modules.values():
        module.requires_grad_(True)
    return model


def set_adapter(model: nn.Module, name: str) -> nn.Module:
    """Make `name` the active adapter everywhere: it alone shapes outputs and requires grad."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("The model has no LoRA layers; add an adapter with inject_lora first.")
    available = adapter_names(model)
    if name not in available:
        raise ValueError(f"No adapter named {name!r}; the model has {available}.")
    for layer in layers.values():
        layer.set_adapter(name)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside this context the model computes exactly as the base model (merged layers are
    unmerged for the duration, then merged again)."""
    layers = list(lora_layers(model).values())
    merged = [layer for layer in layers if layer.merged_adapter is not None]
    for layer in merged:
        layer.unmerge()
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was_disabled in zip(layers, previous):
            layer.disabled = was_disabled
        for layer in merged:
            layer.merge()


# --------------------------------------------------------------------------------------------------
# Merging and removing adapters
# --------------------------------------------------------------------------------------------------


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights of every LoRA layer (see `LoRALinear.merge`)."""
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo `merge_lora`: the base weights are exactly what they were before."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def _remove_lora_layers(model: nn.Module, merge: bool) -> nn.Module:
    for name, layer in lora_layers(model).items():
        if merge:
            if layer.merged_adapter is None and not layer.disabled:
                layer.merge(keep_original=False)
            layer._weight_before_merge = None  # the merged weight is now the weight
        else:
            layer.unmerge()
        _replace_module(model, name, layer.base_layer)
    state = getattr(model, _STATE_ATTR, None)
    if state is not None:
        for name, param in model.named_parameters():
            if state["requires_grad"] is not None and name in state["requires_grad"]:
                param.requires_grad_(state["requires_grad"][name])
        delattr(model, _STATE_ATTR)
    return model


def unload_lora(model: nn.Module) -> nn.Module:
    """Remove all adapters: each `LoRALinear` goes back to its plain `nn.Linear`, with the base
    weight exactly as it was (merged layers are unmerged, nothing is folded in) and every
    parameter's `requires_grad` as it was before `inject_lora`. Returns the model."""
    return _remove_lora_layers(model, merge=False)


def merge_and_unload_lora(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights and return the model with its own linear
    layers back in place: the fine-tuned model, as fast as the base model and saveable with `save_pretrained`."""
    return _remove_lora_layers(model, merge=True)


# --------------------------------------------------------------------------------------------------
# Counting parameters
# --------------------------------------------------------------------------------------------------


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, counted as PEFT's `get_nb_trainable_parameters` does:
    every parameter once (`model.parameters()` skips repeats, so a tied LM head and embedding count
    once), adapters included in the total."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def trainable_parameters_report(model: nn.Module) -> str:
    """`"trainable params: 147,456 || all params: 124,587,264 || trainable%: 0.1184"`, PEFT's line."""
    trainable, total = trainable_parameters(model)
    percent = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}"


def print_trainable_parameters(model: nn.Module) -> None:
    """Print `trainable_parameters_report(model)`."""
    print(trainable_parameters_report(model))


# --------------------------------------------------------------------------------------------------
# Saving and loading in PEFT's format
# --------------------------------------------------------------------------------------------------


def _adapter_layers(model: nn.Module, adapter_name: str) -> dict[str, LoRALinear]:
    return {name: layer for name, layer in lora_layers(model).items() if adapter_name in layer.lora_A}


def _peft_keys(name: str) -> tuple[str, str]:
    # PEFT's files leave the adapter name out of the keys: the folder holds one adapter.
    return f"{PEFT_KEY_PREFIX}{name}.lora_A.weight", f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"


def _recorded_settings(model: nn.Module, adapter_name: str) -> dict:
    """What `inject_lora` recorded for this adapter (empty for adapters it did not add)."""
    return getattr(model, _STATE_ATTR, {"adapters": {}})["adapters"].get(adapter_name, {})


def _adapter_config(model, layers, adapter_name, task_type, base_model_name_or_path, modules_to_save) -> dict:
    settings = {(l.r[adapter_name], l.lora_alpha[adapter_name], l.use_rslora[adapter_name]) for l in layers.values()}
    if len(settings) > 1:
        raise ValueError(
            f"Adapter {adapter_name!r} has different r/alpha on different layers ({sorted(settings)}); "
            "PEFT's format would need rank_pattern/alpha_pattern, which hf_llm.lora does not write."
        )
    (r, alpha, use_rslora), = settings
    recorded = _recorded_settings(model, adapter_name)
    # The target spec as given to inject_lora; without one, the exact module names (PEFT matches those too).
    target_modules = recorded.get("target_modules", sorted(layers))
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    dropout = next(iter(layers.values())).lora_dropout[adapter_name]
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        "target_modules": target_modules,
        "exclude_modules": None,
        "fan_in_fan_out": False,  # our layers are nn.Linear; PEFT flips it itself for GPT-2's Conv1D
        "bias": "none",
        "lora_bias": False,
        "use_rslora": use_rslora,
        "use_dora": False,
        "init_lora_weights": recorded.get("init_lora_weights", True),
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_adapter(
    model: nn.Module,
    folder: str | os.PathLike,
    adapter_name: str = "default",
    task_type: str | None = "CAUSAL_LM",
    base_model_name_or_path: str | None = None,
    modules_to_save: Sequence[str] | None = None,
) -> Path:
    """Save one adapter in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

    Keys are PEFT's (`base_model.model.<module name>.lora_A.weight`, no adapter name), so
    `PeftModel.from_pretrained(base_model, folder)` loads it, onto this GPT or onto stock GPT-2.
    The modules to save (default: those given to `inject_lora`; e.g. `score` for a reward model,
    with `task_type="SEQ_CLS"`) are stored in full under `base_model.model.<module name>.<param>`,
    as PEFT stores them. The folder is written atomically (`hf_llm.folders.write_folder_atomically`).
    `base_model_name_or_path` defaults to `model.config._name_or_path`. Returns the folder.
    """
    from safetensors.torch import save_file

    layers = _adapter_layers(model, adapter_name)
    if not layers:
        raise ValueError(f"The model has no adapter named {adapter_name!r}; it has {adapter_names(model)}.")
    if modules_to_save is None:
        modules_to_save = _recorded_settings(model, adapter_name).get("modules_to_save")
    saved_modules = find_modules_to_save(model, modules_to_save, require_match=True)
    config = _adapter_config(model, layers, adapter_name, task_type, base_model_name_or_path, modules_to_save)
    tensors = {}
    for name, layer in layers.items():
        key_A, key_B = _peft_keys(name)
        tensors[key_A] = layer.lora_A[adapter_name].weight.detach().cpu().contiguous()
        tensors[key_B] = layer.lora_B[adapter_name].weight.detach().cpu().contiguous()
    for key, param in _saved_module_params(saved_modules).items():
        tensors[key] = param.detach().cpu().contiguous()

    def write(tmp: Path) -> None:
        save_file(tensors, tmp / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    folder = Path(folder)
    write_folder_atomically(folder, write, last=ADAPTER_CONFIG_NAME)  # the config last: it marks a complete adapter
    return folder


def _saved_module_params(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    return {
        f"{PEFT_KEY_PREFIX}{name}.{param_name}": param
        for name, module in modules.items()
        for param_name, param in module.named_parameters()
    }


# adapter_config.json settings this implementation cannot honour, with the value that means "off".
_UNSUPPORTED_SETTINGS = {
    "use_dora": False,
    "lora_bias": False,
    "bias": "none",
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "exclude_modules": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "layer_replication": None,
    "use_qalora": False,
    # LoRA variants whose forward pass differs from plain LoRA's
    "alora_invocation_tokens": None,
    "arrow_config": None,
    "use_bdlora": False,
    "velora_config": None,
    "monteclora_config": None,
    "kasa_config": None,
}
# Initialisations that change the base weight (PEFT redoes them when it loads the adapter), and MiCA, a variant.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")


def _is_off(value, off) -> bool:
    return value is None or value is False or value == {} or value == [] or (type(value) is type(off) and value == off)


def read_adapter_config(folder: str | os.PathLike) -> dict:
    """Read and check a PEFT `adapter_config.json`; FileNotFoundError or ValueError if unusable."""
    path = Path(folder) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: an adapter folder holds {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME} "
            "(as written by save_adapter or PEFT's save_pretrained)."
        )
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {config.get('peft_type')!r}; hf_llm.lora loads only 'LORA' adapters.")
    used = {key: config[key] for key, off in _UNSUPPORTED_SETTINGS.items() if not _is_off(config.get(key), off)}
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        used["init_lora_weights"] = init
    if used:
        raise ValueError(f"{path} uses LoRA features hf_llm.lora does not implement: {used}. Load it with PEFT.")
    if not config.get("target_modules"):
        raise ValueError(f"{path} has no target_modules; hf_llm.lora needs them to know where the adapter goes.")
    return config


def _read_adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / ADAPTER_WEIGHTS_NAME).is_file():
        from safetensors.torch import load_file

        return load_file(folder / ADAPTER_WEIGHTS_NAME)
    if (folder / ADAPTER_WEIGHTS_NAME_PT).is_file():
        return torch.load(folder / ADAPTER_WEIGHTS_NAME_PT, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder / ADAPTER_WEIGHTS_NAME} not found (nor {ADAPTER_WEIGHTS_NAME_PT}).")


def load_adapter(
    model: nn.Module,
    folder: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
) -> nn.Module:
    """Load an adapter saved by `save_adapter` or by PEFT's `save_pretrained` into `model`.

    If the model has no adapter called `adapter_name`, it is injected first from the folder's
    `adapter_config.json` (targets, r, alpha, dropout). The loaded adapter becomes the active one.
    As with `PeftModel.from_pretrained`, it is frozen and the model put in eval mode unless
    `is_trainable=True`. An adapter trained on stock GPT-2 (Conv1D, `fan_in_fan_out: true`) loads
    too: A and B have the same shapes either way. Modules saved with the adapter (`modules_to_save`,
    e.g. a reward model's `score` head) are copied into the model's own modules. Raises FileNotFoundError for a folder without
    `adapter_config.json`, ValueError for unsupported settings or keys that do not fit the model.
    """
    folder = Path(folder)
    config = read_adapter_config(folder)
    weights = _read_adapter_weights(folder)

    if not _adapter_layers(model, adapter_name):
        inject_lora(
            model,
            config["target_modules"],
            LoRASettings(
                r=config["r"], alpha=config["lora_alpha"], dropout=config.get("lora_dropout", 0.0),
                use_rslora=bool(config.get("use_rslora", False)),
            ),
            adapter_name=adapter_name,
            require_every_target=False,  # PEFT loads an adapter if any of its targets exists
        )
    params = {}
    for name, layer in _adapter_layers(model, adapter_name).items():
        key_A, key_B = _peft_keys(name)
        params[key_A] = layer.lora_A[adapter_name].weight
        params[key_B] = layer.lora_B[adapter_name].weight
    saved_params = _saved_module_params(find_modules_to_save(model, config.get("modules_to_save")))
    params.update(saved_params)
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"Adapter weights in {folder} do not fit the model: missing {missing[:4]} ({len(missing)} in all), "
            f"unexpected {unexpected[:4]} ({len(unexpected)} in all)."
        )
    with torch.no_grad():
        for key, param in params.items():
            if weights[key].shape != param.shape:
                raise ValueError(f"{key}: shape {tuple(weights[key].shape)} in {folder}, {tuple(param.shape)} in the model.")
            param.copy_(weights[key])

    for layer in lora_layers(model).values():
        layer.set_adapter(adapter_name, trainable=is_trainable)
    for param in saved_params.values():
        param.requires_grad_(is_trainable)
    if not is_trainable:
        model.eval()  # as PEFT does: dropout off for inference
    return model


__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "LoRALinear",
    "LoRASettings",
    "adapter_names",
    "disable_adapters",
    "find_modules_to_save",
    "find_target_modules",
    "inject_lora",
    "load_adapter",
    "lora_layers",
    "merge_and_unload_lora",
    "merge_lora",
    "print_trainable_parameters",
    "read_adapter_config",
    "save_adapter",
    "set_adapter",
    "trainable_parameters",
    "trainable_parameters_report",
    "unload_lora",
    "unmerge_lora",
]
