"""GPT-2, written from scratch as a transformers model.

The architecture is OpenAI's GPT-2: token and learned position embeddings, a stack of pre-LayerNorm
blocks (masked multi-head self-attention, then a GELU MLP, each added back to the residual stream),
a final LayerNorm, and an LM head that shares its weight with the token embedding.

Module names are GPT-2's (`transformer.h.0.attn.c_attn`, ...), so state-dict keys and PEFT target
names line up with the Hub's GPT-2. The one difference is the layout of the four projection weights:
stock GPT-2 keeps them in a `Conv1D` module, stored (in_features, out_features); here they are plain
`nn.Linear`, (out_features, in_features). Checkpoints on disk always use GPT-2's layout, so a stock
checkpoint loads here and a checkpoint saved here loads into stock `GPT2LMHeadModel`; the weights are
transposed when they are read and written.

This file imports only torch, transformers and the config module: it also runs as Hub remote code.
"""

import dataclasses
import math
import time
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.core_model_loading import Transpose, WeightConverter
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_gpt import GPTConfig

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain attention: softmax(q k^T * scaling + mask) v, written out so the weights can be returned.

    `query`, `key`, `value` are (batch, heads, length, head_dim); `attention_mask` is additive
    (0 where allowed, a large negative number where masked). Returns the output as
    (batch, length, heads, head_dim) and the attention probabilities.
    """
    if getattr(module, "reorder_and_upcast_attn", False):
        # Mixed precision: scale before the product and keep scores and softmax in float32.
        with torch.autocast(query.device.type, enabled=False):
            scores = torch.matmul(query.float() * scaling, key.float().transpose(-1, -2))
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2)
    return output, probs


KV_CACHE_BLOCK = 128  # key/value buffers hold a multiple of this many positions


def update_kv_cache(cache: Cache, layer_idx: int, key: torch.Tensor, value: torch.Tensor):
    """Append this step's keys and values to layer `layer_idx` of `cache` and return all of them.

    `DynamicLayer` appends by concatenation, which copies the layer's whole cache into a new tensor
    for every decoded token. Here a plain `DynamicLayer` of a `DynamicCache` gets its keys and values
    as views into buffers with room for up to `KV_CACHE_BLOCK` more positions, and new positions are
    written in place; the cache object, its classes and everything they report stay as transformers
    defines them. If anything replaced the layer's tensors since the last write (crop, reorder, batch
    selection, reset, offloading), the buffers are rebuilt from what the layer holds now. Other
    caches and layers, inputs that need gradients and torch.compile use the cache's own `update`.
    """
    layer = cache.layers[layer_idx] if layer_idx < len(cache.layers) else None
    if (
        type(cache) is not DynamicCache
        or cache.offloading
        or type(layer) is not DynamicLayer
        or key.requires_grad
        or value.requires_grad
        or torch.compiler.is_compiling()
    ):
        return cache.update(key, value, layer_idx)
    if not layer.is_initialized:
        layer.lazy_initialization(key, value)
    keys, values = layer.keys, layer.values
    past = keys.shape[-2] if keys.ndim == 4 else 0
    total = past + key.shape[-2]
    if past and (keys.shape[:2] + keys.shape[3:] != key.shape[:2] + key.shape[3:] or keys.dtype != key.dtype):
        return cache.update(key, value, layer_idx)  # mismatched inputs: concatenation reports them
    # Weak references to the views handed out last time: if the layer still holds exactly those, their
    # bases are our buffers (and a reset or a deleted cache frees the buffers with the views).
    handed_out = getattr(layer, "_kv_views", None)
    ours = handed_out is not None and handed_out[0]() is keys and handed_out[1]() is values
    if ours and total <= keys._base.shape[-2]:
        key_buffer, value_buffer = keys._base, values._base
    else:
        capacity = (total // KV_CACHE_BLOCK + 1) * KV_CACHE_BLOCK
        key_buffer = key.new_empty(key.shape[:2] + (capacity,) + key.shape[3:])
        value_buffer = value.new_empty(value.shape[:2] + (capacity,) + value.shape[3:])
        if past:
            key_buffer[:, :, :past].copy_(keys)
            value_buffer[:, :, :past].copy_(values)
    key_buffer[:, :, past:total].copy_(key)
    value_buffer[:, :, past:total].copy_(value)
    layer.keys, layer.values = key_buffer[:, :, :total], value_buffer[:, :, :total]
    layer._kv_views = (weakref.ref(layer.keys), weakref.ref(layer.values))
    return layer.keys, layer.values


class GPTLinear(nn.Linear):
    """`nn.Linear` that, on CPU, runs inputs of only a few rows through the faster of two equal products.

    Decoding feeds one token per sequence, so each projection sees one or a few rows and its time goes
    into streaming the weights. CPU BLAS libraries run `x @ W.T` (what `F.linear` computes) and the
    transposed `(W @ x.T).T` through different kernels for such skinny products, and which one is
    faster depends on the CPU: on this project's 2-core machines the transposed one was 1.4-3x faster
    at 1-64 rows on AMD EPYC, and the plain one 2x faster at 1-2 rows on Intel Xeon (MKL). So the
    first time a weight shape meets a row count (rounded up to a power of two), both products are
    timed on that input and the faster one serves that shape and row count from then on, for every
    GPTLinear in the process (the choices are kept in `GPTLinear.few_rows_choices`). The two agree
    up to summation order. Set `few_rows_product` to "plain" or "transposed" to skip the timing.
    More than `few_rows` rows, other devices and torch.compile take `F.linear`. Still an
    `nn.Linear`: PEFT/LoRA wrap it as usual.
    """

    few_rows: int = 64  # inputs of at most this many rows choose their product
    few_rows_product: str | None = None  # "plain" or "transposed" to force one; None: the faster
    few_rows_choices: dict = {}  # (out, in, bias, rows rounded up, dtype, threads) -> "plain" | "transposed"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.numel() // self.in_features if self.in_features else 0
        if input.device.type != "cpu" or not 0 < rows <= self.few_rows or torch.compiler.is_compiling():
            return F.linear(input, self.weight, self.bias)
        product = self.few_rows_product or self._faster_product(input, rows)
        if product == "plain":
            return F.linear(input, self.weight, self.bias)
        if product == "transposed":
            return self._transposed_product(input, rows)
        raise ValueError(f"GPTLinear.few_rows_product must be 'plain', 'transposed' or None, got {product!r}.")

    def _transposed_product(self, input: torch.Tensor, rows: int) -> torch.Tensor:
        flat = input.reshape(rows, self.in_features)
        if rows == 1:
            flat = F.pad(flat, (0, 0, 0, 1))  # BLAS would take a single column as a vector again
        columns = flat.t()  # a transposed view: BLAS reads it in place
        if self.bias is None:
            output = torch.mm(self.weight, columns)
        else:
            output = torch.addmm(self.bias[:, None], self.weight, columns)
        return output[:, :rows].t().contiguous().view(*input.shape[:-1], self.out_features)

    def _faster_product(self, input: torch.Tensor, rows: int) -> str:
        key = (
            self.out_features,
            self.in_features,
            self.bias is not None,
            1 << (rows - 1).bit_length(),
            input.dtype,
            torch.get_num_threads(),
        )
        choice = GPTLinear.few_rows_choices.get(key)
        if choice is None:
            choice = GPTLinear.few_rows_choices[key] = self._time_products(input, rows)
        return choice

    def _time_products(self, input: torch.Tensor, rows: int) -> str:
        """Best of three timed calls of each product, alternating, after one untimed call of each."""
        products = {
            "plain": lambda: F.linear(input, self.weight, self.bias),
            "transposed": lambda: self._transposed_product(input, rows),
        }
        best = dict.fromkeys(products, math.inf)
        with torch.no_grad():
            for round_index in range(4):
                for name, product in products.items():
                    start = time.perf_counter()
                    product()
                    if round_index:
                        best[name] = min(best[name], time.perf_counter() - start)
        return min(best, key=best.get)


class GPTAttention(nn.Module):
    """Masked multi-head self-attention with the query, key and value projections fused in `c_attn`."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.is_causal = True
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        self.scaling = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)

        self.c_attn = GPTLinear(config.n_embd, 3 * config.n_embd)
        self.c_proj = GPTLinear(config.n_embd, config.n_embd)
        # A module, not a float, so tools that switch dropout off (TRL's disable_dropout) reach it too.
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        # One matrix product gives q, k and v; view them as (batch, length, 3, heads, head_dim).
        qkv = self.c_attn(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.transpose(1, 3).unbind(dim=2)  # each (batch, heads, length, head_dim)

        if past_key_values is not None:
            key, value = update_kv_cache(past_key_values, self.layer_idx, key, value)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attn_dropout.p if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(batch, length, -1)
        return self.resid_dropout(self.c_proj(output)), weights


class GPTMLP(nn.Module):
    """The position-wise feed-forward network: expand to `n_inner`, activate, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = GPTLinear(config.n_embd, inner)
        if config.activation_function in ("gelu_new", "gelu_pytorch_tanh"):
            # GPT-2's tanh-approximated GELU as one fused kernel (several times faster than the
            # composite formula on CPU, equal to it within 1e-6).
            self.act = nn.GELU(approximate="tanh")
        else:
            self.act = ACT2FN[config.activation_function]
        self.c_proj = GPTLinear(inner, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class GPTBlock(GradientCheckpointingLayer):
    """One transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPTMLP(config)
        # Trainer's resume and plain `load_state_dict` read checkpoints without transformers' key
        # conversions: accept GPT-2's (in, out) layout there too.
        self._register_load_state_dict_pre_hook(_transpose_conv1d_layout_hook, with_module=True)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attn(
            self.ln_1(hidden_states), attention_mask=attention_mask, past_key_values=past_key_values, **kwargs
        )
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, attn_weights


# --------------------------------------------------------------------------------------------------
# GPT-2 checkpoint layout
# --------------------------------------------------------------------------------------------------

# Weights that GPT-2 stores (in_features, out_features) in its Conv1D modules.
CONV1D_WEIGHT_NAMES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# The same weights inside a LoRA layer (hf_llm.lora or PEFT), e.g. `attn.c_attn.base_layer.weight`: a
# model saved in training with its adapters injected keeps every base weight in GPT-2's layout too.
_WRAPPED_CONV1D_WEIGHT_NAMES = tuple(name.replace(".weight", ".base_layer.weight") for name in CONV1D_WEIGHT_NAMES)
_LAYOUT_WEIGHT_NAMES = CONV1D_WEIGHT_NAMES + _WRAPPED_CONV1D_WEIGHT_NAMES
# c_attn's weight, bare or wrapped: its shape tells which layout a checkpoint uses.
_C_ATTN_WEIGHT_NAMES = (CONV1D_WEIGHT_NAMES[0], _WRAPPED_CONV1D_WEIGHT_NAMES[0])


def _conv1d_layout_converters() -> list[WeightConverter]:
    """transformers weight converters between GPT-2's on-disk layout and `nn.Linear`'s."""
    converters = []
    for name in _LAYOUT_WEIGHT_NAMES:
        pattern = name.replace(".", r"\.")
        converters.append(WeightConverter(source_patterns=pattern, target_patterns=pattern, operations=[Transpose(0, 1)]))
    return converters


def _transpose_conv1d_layout_hook(module, state_dict, prefix, *args, **kwargs):
    # c_attn is (3 * n_embd, n_embd) as nn.Linear and (n_embd, 3 * n_embd) in GPT-2's layout: never
    # square, so its shape tells which layout the whole block was saved in.
    c_attn = next((state_dict[prefix + name] for name in _C_ATTN_WEIGHT_NAMES if prefix + name in state_dict), None)
    if c_attn is None or tuple(c_attn.shape) == tuple(module.attn.c_attn.weight.shape):
        return
    for name in _LAYOUT_WEIGHT_NAMES:
        if prefix + name in state_dict:
            state_dict[prefix + name] = state_dict[prefix + name].t()


def _checkpoint_uses_conv1d_layout(state_dict, checkpoint_files) -> bool:
    """Whether a checkpoint stores c_attn as (n_embd, 3 * n_embd), i.e. GPT-2's layout."""
    shape = None
    if state_dict is not None:
        for key, tensor in state_dict.items():
            if key.endswith(_C_ATTN_WEIGHT_NAMES):
                shape = tuple(tensor.shape)
                break
    for file in checkpoint_files or []:
        if shape is not None:
            break
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="pt") as handle:
                key = next((k for k in handle.keys() if k.endswith(_C_ATTN_WEIGHT_NAMES)), None)
                if key is not None:
                    shape = tuple(handle.get_slice(key).get_shape())
        else:
            tensors = torch.load(file, map_location="meta", weights_only=True, mmap=True)
            key = next((k for k in tensors if k.endswith(_C_ATTN_WEIGHT_NAMES)), None)
            if key is not None:
                shape = tuple(tensors[key].shape)
    return shape is not None and shape[1] == 3 * shape[0]


# --------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------


class TiedHeadGradient:
    """Hands the tied LM head's weight gradient from the loss's backward to the embedding's.

    With tied weights, autograd would sum two (vocab, n_embd) gradients for the one weight: the
    head's, and the embedding's, which is a zero tensor of that size with a few rows filled in.
    Instead the loss gives its gradient to this holder, and the token-embedding lookup's backward
    (which always runs after it: the loss depends on the embedding's output) adds its rows into
    that tensor in place and returns it as the weight's only gradient. One full-size tensor fewer
    per step to allocate, zero and add; on CPU, where a fresh allocation of that size is
    page-faulted anew each step, this is a tenth of a second per step at 124M.
    """

    __slots__ = ("grad",)

    def __init__(self):
        self.grad = None


class _TokenEmbedding(torch.autograd.Function):
    """`F.embedding(ids, weight)` whose weight gradient is added into a `TiedHeadGradient`'s tensor."""

    @staticmethod
    def forward(ctx, ids, weight, tied):
        ctx.save_for_backward(ids)
        ctx.tied = tied
        ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad_output):
        (ids,) = ctx.saved_tensors
        grad_weight, ctx.tied.grad = ctx.tied.grad, None
        if grad_weight is None:  # the loss was not back-propagated (another output was)
            grad_weight = torch.zeros(ctx.weight_shape, dtype=ctx.weight_dtype, device=grad_output.device)
        rows = grad_output.reshape(-1, grad_output.shape[-1]).to(grad_weight.dtype)
        grad_weight.index_add_(0, ids.reshape(-1), rows)
        return None, grad_weight, None


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, one row chunk at a time.

    The full (tokens, vocab) logits never exist. Each chunk's logits are made, turned into the loss
    and into the gradients of hidden and weight, and dropped, so backward only scales the stored
    gradients: three matrix products in all, as in the plain path. Chunk-sized buffers serve every
    chunk and the kernels write into them in place: on CPU a fresh allocation of this size is
    mapped and page-faulted anew each time, which costs more than the arithmetic on it.
    A chunk's logits are formed transposed, (vocab, rows) = `weight @ hidden.T`, and the softmax is
    taken down the columns: on CPU this product runs 1.3-1.6x faster than `hidden @ weight.T`
    (measured at n_embd 256 and 768), and the gradient products read that layout as fast.
    Every target must be a class index (the caller drops ignored positions first).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, tied):
        device_type = hidden.device.type
        compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows, vocab = hidden.shape[0], weight.shape[0]
        step = max(1, min(chunk_size, rows))
        device = hidden.device
        grad_hidden = torch.empty(hidden.shape, dtype=compute_dtype, device=device) if need_hidden_grad else None
        grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=device) if need_weight_grad else None
        if need_weight_grad and rows == 0:
            grad_weight.zero_()
        total = torch.zeros((), dtype=torch.float32, device=device)
        w = weight.to(compute_dtype)
        # Flat buffers, viewed as (vocab, n) for each chunk of n rows (the last may be shorter). The
        # softmax is taken in float32: in place in the logits buffer when they are float32 already.
        logits_buffer = torch.empty(vocab * step, dtype=compute_dtype, device=device)
        float_buffer = logits_buffer if compute_dtype == torch.float32 else torch.empty(vocab * step, device=device)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, rows, step):
                h = hidden[start : start + step].to(compute_dtype)
                t = targets[start : start + step]
                n = h.shape[0]
                columns = torch.arange(n, device=device)
                logits = torch.mm(w, h.t(), out=logits_buffer[: vocab * n].view(vocab, n))
                probs = float_buffer[: vocab * n].view(vocab, n)
                if float_buffer is not logits_buffer:
                    probs.copy_(logits)
                # loss = log(sum(exp(logits - max))) - (logit of the target - max), per column.
                probs.sub_(probs.amax(dim=0))
                target_logits = probs[t, columns]
                sums = probs.exp_().sum(dim=0)
                total += (sums.log() - target_logits).sum()
                if not (need_hidden_grad or need_weight_grad):
                    continue
                # d(loss)/d(logits) = softmax - one_hot(target), made in place.
                grad_logits = probs.mul_(sums.reciprocal_())
                grad_logits[t, columns] -= 1.0
                grad_logits = grad_logits.to(compute_dtype)
                if need_hidden_grad:
                    torch.mm(grad_logits.t(), w, out=grad_hidden[start : start + n])
                if need_weight_grad:
                    if compute_dtype != torch.float32:
                        chunk_grad = (grad_logits @ h).float()
                        grad_weight.copy_(chunk_grad) if start == 0 else grad_weight.add_(chunk_grad)
                    elif start == 0:
                        torch.mm(grad_logits, h, out=grad_weight)
                    else:
                        grad_weight.addmm_(grad_logits, h)
        # Kept on ctx, not saved: backward hands these very tensors on, scaled in place, so the
        # (vocab, n_embd) weight gradient is not copied (tied embeddings add theirs into it).
        ctx.gradients = [grad_hidden, grad_weight]
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.tied = tied
        return total

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.gradients is None:
            raise RuntimeError(
                "The chunked LM loss was back-propagated twice (retain_graph=True); its gradients are "
                "handed on once. Compute the loss again, or call the model with return_logits=True."
            )
        grad_hidden, grad_weight = ctx.gradients
        ctx.gradients = None
        hidden_dtype, weight_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_output.to(grad_hidden.dtype)).to(hidden_dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_output).to(weight_dtype)
            if ctx.tied is not None:  # the token embedding's backward adds its rows and returns it
                ctx.tied.grad, grad_weight = grad_weight, None
        return grad_hidden, grad_weight, None, None, None


# Left to eager mode under torch.compile: the chunk loop writes into reused buffers in place, and
# dropping ignored rows gives data-dependent shapes; both would break or bloat a traced graph.
@torch.compiler.disable
def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    tied_gradient: TiedHeadGradient | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy without materialising the full-vocabulary logits.

    Equal to `ForCausalLMLoss(hidden_states @ lm_head_weight.T, labels)`: labels are shifted by one
    inside (or `shift_labels`, already aligned with the positions, are used as given, as in
    transformers), positions labelled `ignore_index` are skipped, and the sum is divided by the number
    of counted tokens, or by `num_items_in_batch` when the Trainer passes it (gradient accumulation).
    Any other target outside the vocabulary raises a ValueError.
    With `tied_gradient`, the weight's gradient goes to that holder instead (see `TiedHeadGradient`).
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"The labels give {targets.shape[0]} targets for {hidden.shape[0]} positions: pass labels (or "
            f"shift_labels) of the same (batch, length) shape as the input ids."
        )
    # Rows without a target cost nothing in the loss: skip them.
    keep = targets != ignore_index
    hidden, targets = hidden[keep], targets[keep]
    vocab = lm_head_weight.shape[0]
    low, high = (int(t) for t in torch.aminmax(targets)) if targets.numel() else (0, 0)
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(
            f"Label {bad} is neither a token id (0 to {vocab - 1}) nor ignore_index ({ignore_index}). Mark "
            f"positions to skip with ignore_index (-100 by default), or pass ignore_index={bad} if that is "
            f"your marker."
        )
    if chunk_size is None:
        # About 512 rows at GPT-2's vocabulary (measured fastest on CPU); more rows for small vocabularies.
        chunk_size = max(512, 2**24 // vocab)
    total = _ChunkedLinearCrossEntropy.apply(hidden, lm_head_weight, targets, chunk_size, tied_gradient)
    if num_items_in_batch is None:
        denominator = keep.sum().clamp(min=1)
    else:
        denominator = torch.as_tensor(num_items_in_batch, device=total.device)
    return total / denominator


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def _marks_output_as_requiring_grad(hook) -> bool:
    # transformers' enable_input_require_grads (called by gradient checkpointing and PEFT) hooks the
    # input embedding only to set requires_grad on its output, which a trained weight's output has anyway.
    return getattr(hook, "__name__", "") == "make_inputs_require_grads" and hook.__module__.startswith("transformers.")


def _runs_its_own_forward(module: nn.Module, classes: tuple[type, ...]) -> bool:
    """Whether `module` is exactly one of `classes`, with no hook or replaced forward that could change its output."""
    return (
        type(module) in classes
        and all(_marks_output_as_requiring_grad(hook) for hook in module._forward_hooks.values())
        and not module._forward_pre_hooks
        and "forward" not in vars(module)  # accelerate's hooks, among others, replace forward on the instance
        and not torch.nn.modules.module._global_forward_hooks
        and not torch.nn.modules.module._global_forward_pre_hooks
    )


class GPTPreTrainedModel(PreTrainedModel):
    """Weight initialisation, GPT-2 checkpoint conversion and the transformers feature flags."""

    config_class = GPTConfig
    config: GPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPTBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # Old GPT-2 checkpoints carry the causal mask as a buffer; the mask is built on the fly here.
    _keys_to_ignore_on_load_unexpected = [r"attn\.bias", r"attn\.masked_bias"]

    def post_init(self):
        super().post_init()
        # save_pretrained reverts these conversions, so checkpoints are written in GPT-2's layout.
        self._weight_conversions = _conv1d_layout_converters()

    @torch.no_grad()
    def _init_weights(self, module):
        """GPT-2's initialisation: N(0, initializer_range) everywhere, with the two residual
        projections of each block scaled down by sqrt(2 * n_layer)."""
        super()._init_weights(module)
        if isinstance(module, (GPTAttention, GPTMLP)):
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.c_proj.weight, mean=0.0, std=std)

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys=None):
        # Checkpoints in GPT-2's layout (ours and stock) get their projections transposed on the way in.
        own = _conv1d_layout_converters()
        if _checkpoint_uses_conv1d_layout(state_dict, checkpoint_files):
            load_config = dataclasses.replace(load_config, weight_mapping=[*(load_config.weight_mapping or []), *own])
        result = PreTrainedModel._load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys)
        others = [c for c in getattr(model, "_weight_conversions", None) or [] if not _is_layout_converter(c)]
        model._weight_conversions = [*others, *own]
        return result


def _is_layout_converter(conversion) -> bool:
    return isinstance(conversion, WeightConverter) and any(
        isinstance(op, Transpose) for op in conversion.operations
    ) and any(name.replace(".", r"\.") in conversion.source_patterns for name in _LAYOUT_WEIGHT_NAMES)


class GPTModel(GPTPreTrainedModel):
    """The bare GPT-2 transformer: embeddings, blocks and final LayerNorm, returning hidden states."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPTBlock(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def _check_inputs(self, input_ids, position_ids, past_length, length):
        if torch.compiler.is_compiling():
            return  # data-dependent checks would break the graph; compiled callers are trusted
        # Explicit position_ids may restart within a row (several documents packed into one), so then
        # only the positions themselves are bounded, not the row's length.
        if position_ids is None and past_length + length > self.config.n_positions:
            raise ValueError(
                f"Input too long: {past_length + length} positions (prompt/cache {past_length} + new {length}) "
                f"but this model has n_positions={self.config.n_positions}. Truncate the input to at most "
                f"{self.config.n_positions} tokens (e.g. tokenizer(..., truncation=True, max_length="
                f"{self.config.n_positions})) or lower max_new_tokens."
            )
        if input_ids is not None and input_ids.numel() > 0:
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = high if high >= self.config.vocab_size else low
                raise ValueError(
                    f"Token id {bad} is outside the vocabulary (vocab_size={self.config.vocab_size}). The tokenizer "
                    f"and the model disagree: use the model's own tokenizer, or call "
                    f"model.resize_token_embeddings(len(tokenizer)) after adding tokens."
                )
        if position_ids is not None and position_ids.numel() > 0 and int(position_ids.max()) >= self.config.n_positions:
            raise ValueError(
                f"position_ids reach {int(position_ids.max())} (prompt/cache {past_length} + new {length} "
                f"positions) but this model has n_positions={self.config.n_positions}, so positions must be "
                f"below {self.config.n_positions}. Truncate the input (or each packed document) to at most "
                f"{self.config.n_positions} tokens, or lower max_new_tokens."
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        tied_head_gradient: TiedHeadGradient | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        Args:
            input_ids: token ids, (batch, length). With a cache, only the new tokens.
            past_key_values: a `Cache` (e.g. `DynamicCache`, `StaticCache`) holding earlier keys and values.
            attention_mask: 1 for real tokens and 0 for padding, (batch, past + length); left or right padding.
            token_type_ids: optional ids embedded with `wte` and added, as GPT-2 does.
            position_ids: positions of the new tokens; by default they continue after the cache.
            inputs_embeds: token embeddings instead of `input_ids`.
            tied_head_gradient: set by `GPTForCausalLM` when its chunked loss hands the tied weight's
                gradient to the token-embedding lookup (see `TiedHeadGradient`); leave it None.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False  # the cache would be written twice when checkpointed blocks re-run

        # Like GPT-2, accept ids with extra leading dimensions, e.g. (batch, choices, length), and give the
        # final hidden states back in that shape.
        leading_shape = (input_ids.shape if inputs_embeds is None else inputs_embeds.shape[:-1])[:-1]
        if inputs_embeds is None:
            input_ids = input_ids.view(-1, input_ids.shape[-1])
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        length = input_ids.shape[-1] if inputs_embeds is None else inputs_embeds.shape[1]
        self._check_inputs(input_ids, position_ids, past_length, length)

        if inputs_embeds is None and tied_head_gradient is not None:
            inputs_embeds = _TokenEmbedding.apply(input_ids, self.wte.weight, tied_head_gradient)
        elif inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device).unsqueeze(0)
        hidden_states = inputs_embeds + self.wpe(position_ids).to(inputs_embeds.device)
        if token_type_ids is not None:
            hidden_states = hidden_states + self.wte(token_type_ids.view(-1, length))
        hidden_states = self.drop(hidden_states)

        if attention_mask is not None and attention_mask.ndim < 4:
            attention_mask = attention_mask.view(hidden_states.shape[0], -1)
        # The right mask for the attention implementation in use (additive, boolean, block mask or None).
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.h:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = block(
                hidden_states,
                attention_mask=causal_mask,
                past_key_values=past_key_values,
                position_ids=position_ids,
                output_attentions=output_attentions,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.ln_f(hidden_states)
        if len(leading_shape) > 1:
            hidden_states = hidden_states.view(*leading_shape, *hidden_states.shape[1:])
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        past_key_values = past_key_values if use_cache else None
        if not return_dict:
            return tuple(v for v in (hidden_states, past_key_values, all_hidden_states, all_attentions) if v is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


class GPTForCausalLM(GPTPreTrainedModel, GenerationMixin):
    """GPT-2 with its language-modelling head (tied to the token embedding)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.transformer = GPTModel(config)
        self.lm_head = GPTLinear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _lm_head_is_plain(self) -> bool:
        """Whether the LM head computes exactly `hidden @ weight.T`, so the chunked loss may stand in for it."""
        return _runs_its_own_forward(self.lm_head, (nn.Linear, GPTLinear)) and self.lm_head.bias is None

    def _can_hand_over_head_gradient(self) -> bool:
        """Whether the chunked loss may pass the tied weight's gradient to the embedding lookup.

        Only for GPT-2's own modules (a plain `nn.Embedding` whose weight is the LM head's, trained),
        on CPU where it is measured to pay, and in eager mode.
        """
        wte = self.transformer.wte
        return (
            _runs_its_own_forward(wte, (nn.Embedding,))
            and wte.padding_idx is None
            and wte.max_norm is None
            and not wte.scale_grad_by_freq
            and not wte.sparse
            and wte.weight is getattr(self.lm_head, "weight", None)
            and wte.weight.requires_grad
            and wte.weight.device.type == "cpu"
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_logits: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        Args:
            labels: token ids to predict, (batch, length), shifted by one inside; -100 is ignored.
                As with transformers' loss, `shift_labels` (already aligned targets), `ignore_index`
                and `num_items_in_batch` may be passed as keyword arguments.
            logits_to_keep: if an int > 0, compute logits only for the last that many positions
                (generation uses 1); a tensor selects positions.
            return_logits: whether to return logits when `labels` are given. By default, a model in
                training mode with labels computes the loss chunk by chunk without materialising the
                full-vocabulary logits, and returns `logits=None`; pass `True` to get them. A wrapped
                LM head (a PEFT layer, a forward hook) always runs its own forward, and the logits
                are returned.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        # The loss's own arguments, as transformers' ForCausalLMLoss takes them.
        loss_kwargs = {
            name: kwargs.pop(name)
            for name in ("num_items_in_batch", "ignore_index", "shift_labels")
            if kwargs.get(name) is not None
        }
        if return_logits is None:
            return_logits = labels is None or not self.training
        # The chunked loss reads the head's weight directly, so a head whose forward is more than
        # that product (a PEFT LoRA layer, a hook) goes through its forward and the plain loss.
        chunked_loss = labels is not None and not return_logits and self._lm_head_is_plain()
        tied = TiedHeadGradient() if chunked_loss and inputs_embeds is None and self._can_hand_over_head_gradient() else None
        outputs = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            tied_head_gradient=tied,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state

        loss, logits = None, None
        if chunked_loss:
            loss = chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels, tied_gradient=tied, **loss_kwargs)
        else:
            if isinstance(logits_to_keep, int):
                kept = hidden_states[:, -logits_to_keep:, :] if logits_to_keep > 0 else hidden_states
            else:
                kept = hidden_states[:, logits_to_keep, :]
            logits = self.lm_head(kept)
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **loss_kwargs)

        if not return_dict:
            rest = tuple(v for v in (outputs.past_key_values, outputs.hidden_states, outputs.attentions) if v is not None)
            head = (logits,) if logits is not None else ()
            return ((loss,) if loss is not None else ()) + head + rest
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class GPTForSequenceClassification(GPTPreTrainedModel):
    """GPT-2 with a linear `score` head read at the last non-padding token (reward models use this)."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPTModel(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | tuple:
        r"""
        Args:
            labels: class ids (num_labels > 1), targets for regression (num_labels == 1), or
                multi-hot vectors; the loss follows `config.problem_type` as in transformers.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size = logits.shape[0]

        # Read each sequence at its last token that is not padding (works with left or right padding).
        if self.config.pad_token_id is None:
            if batch_size != 1:
                raise ValueError(
                    "GPTForSequenceClassification needs config.pad_token_id to find the last token of padded "
                    "sequences in a batch. Set model.config.pad_token_id = tokenizer.pad_token_id."
                )
            last_token = torch.full((batch_size,), logits.shape[1] - 1, device=logits.device)
        elif input_ids is not None:
            not_pad = (input_ids != self.config.pad_token_id).to(logits.device, torch.int32)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last_token = (positions * not_pad).argmax(-1)
        else:
            logger.warning_once("Padding cannot be detected from inputs_embeds: reading the last position.")
            last_token = torch.full((batch_size,), logits.shape[1] - 1, device=logits.device)
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), last_token]

        loss = None
        if labels is not None:
            loss = self._classification_loss(pooled_logits, labels.to(pooled_logits.device))

        if not return_dict:
            rest = tuple(v for v in (outputs.past_key_values, outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (pooled_logits,) + rest
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _classification_loss(self, logits, labels):
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


__all__ = ["GPTPreTrainedModel", "GPTModel", "GPTForCausalLM", "GPTForSequenceClassification"]
