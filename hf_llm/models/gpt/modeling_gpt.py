"""GPT-2, written from scratch as a transformers model.

The architecture is OpenAI's GPT-2: token and learned position embeddings, a stack of pre-LayerNorm
blocks (masked multi-head self-attention, then a GELU MLP, each added back to the residual stream),
a final LayerNorm, and an LM head that shares its weight with the token embedding.

Module names are GPT-2's (`transformer.h.0.attn.c_attn`, ...), so state-dict keys and PEFT target
names line up with the Hub's GPT-2. The one difference is the layout of the four projection weights:
stock GPT-2 keeps them in a `Conv1D` module, stored (in_features, out_features); here they are
`nn.Linear`s, (out_features, in_features). Checkpoints on disk always use GPT-2's layout, so a stock
checkpoint loads here and a checkpoint saved here loads into stock `GPT2LMHeadModel`: transformers
transposes the four weights on the way in and out (the conversion registered below).

The speed paths (a faster few-row product for decoding, an opt-in chunked LM-head loss) live in
`speed_paths.py`; they compute what the plain modules compute. Both files
import only torch and transformers: they also run as Hub remote code.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Transpose, WeightConverter
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, is_torchdynamo_compiling
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_gpt import GPTConfig
from .speed_paths import (
    GPTLinear,
    chunked_causal_lm_loss,
    embed_tokens,
    lm_head_is_plain,
    tied_head_gradient_for,
)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain attention: softmax(q k^T * scaling + mask) v, written out so the weights can be returned.

    `query`, `key`, `value` are (batch, heads, length, head_dim); `attention_mask` is additive
    (0 where allowed, a large negative number where masked). Returns the output as
    (batch, length, heads, head_dim) and the attention probabilities.
    """
    if module.reorder_and_upcast_attn:
        # Mixed precision: scale before the product and keep scores and softmax in float32.
        with torch.autocast(query.device.type, enabled=False):
            scores = torch.matmul(query.float() * scaling, key.float().transpose(-1, -2))
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2), probs


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
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        # One matrix product gives q, k and v; view them as (batch, length, 3, heads, head_dim).
        qkv = self.c_attn(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.transpose(1, 3).unbind(dim=2)  # each (batch, heads, length, head_dim)

        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

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
        # Trainer's resume and plain `load_state_dict` read checkpoints without transformers' weight
        # conversions: accept GPT-2's (in, out) layout there too.
        self._register_load_state_dict_pre_hook(_accept_conv1d_layout, with_module=True)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask, cache=cache, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


# --------------------------------------------------------------------------------------------------
# GPT-2's checkpoint layout
# --------------------------------------------------------------------------------------------------

# The weights GPT-2 stores (in_features, out_features), in its Conv1D modules.
CONV1D_WEIGHT_NAMES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

class _Conv1DLayoutTranspose(Transpose):
    """Transposes a projection weight between GPT-2's (in, out) layout and `nn.Linear`'s (out, in).

    Registered under our model type, which a stock `GPT2LMHeadModel` reading one of our config.json
    files reports too: weights bound for its `Conv1D` modules are already in their layout and pass as they are.
    """

    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        model, name = kwargs.get("model"), kwargs.get("full_layer_name") or ""
        try:
            module = model.get_submodule(name.rpartition(".")[0]) if model is not None else None
        except AttributeError:
            module = None
        if type(module).__name__ == "Conv1D":
            tensors = next(iter(input_dict.values()))
            tensor = tensors[0] if isinstance(tensors, list) else tensors
            return {self.get_target_pattern(input_dict, source_patterns, target_patterns): tensor}
        return super().convert(input_dict, source_patterns, target_patterns, **kwargs)

    @property
    def reverse_op(self):
        return _Conv1DLayoutTranspose(self.dim1, self.dim0)


# transformers applies these when loading and reverts them when saving. Registered under our model
# type, so they also apply where this file runs as remote code. Every checkpoint on disk is in GPT-2's
# layout, so the transpose does not look at shapes (which could not tell for the square attn.c_proj).
register_checkpoint_conversion_mapping(
    GPTConfig.model_type,
    [
        WeightConverter(source_patterns=pattern, target_patterns=pattern, operations=[_Conv1DLayoutTranspose(0, 1)])
        for pattern in (name.replace(".", r"\.") for name in CONV1D_WEIGHT_NAMES)
    ],
    overwrite=True,  # the module may be imported twice: as hf_llm and as remote code
)


def _accept_conv1d_layout(block, state_dict, prefix, *args, **kwargs):
    """`load_state_dict` pre-hook: transpose the block's projection weights if they are in GPT-2's layout.

    The layout shows in any of the non-square weights present (c_attn always is); the square
    attn.c_proj follows the others. Weights under other names (inside a wrapper) are left alone.
    """
    present = {name: state_dict[prefix + name] for name in CONV1D_WEIGHT_NAMES if prefix + name in state_dict}
    # The module's `.weight`, which a wrapper in its place (a LoRA layer) also exposes.
    own = {name: tuple(block.get_submodule(name.rpartition(".")[0]).weight.shape) for name in present}
    if any(shape[0] != shape[1] and tuple(present[name].shape) == shape[::-1] for name, shape in own.items()):
        for name, tensor in present.items():
            state_dict[prefix + name] = tensor.t()


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class GPTPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the transformers feature flags."""

    config_class = GPTConfig
    config: GPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPTBlock"]
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": GPTBlock, "attentions": OutputRecorder(GPTAttention, index=1)}
    # Old GPT-2 checkpoints carry the causal mask as a buffer; the mask is built on the fly here.
    _keys_to_ignore_on_load_unexpected = [r"attn\.bias", r"attn\.masked_bias"]

    @torch.no_grad()
    def _init_weights(self, module):
        """GPT-2's initialisation: N(0, initializer_range) everywhere, with the two residual
        projections of each block scaled down by sqrt(2 * n_layer)."""
        super()._init_weights(module)
        if isinstance(module, (GPTAttention, GPTMLP)):
            std = self.config.initializer_range / (2 * self.config.n_layer) ** 0.5
            init.normal_(module.c_proj.weight, mean=0.0, std=std)

    def save_pretrained(self, *args, **kwargs):
        # FSDP 2 swaps the model's class for torch's generated FSDP<Class>; saved as that, the folder's
        # remote code and auto_map would be torch's FSDP modules. Save as the class it wraps.
        sharded_class = type(self)
        own_class = next(c for c in sharded_class.__mro__ if not c.__module__.startswith("torch.distributed."))
        if own_class is sharded_class:
            return super().save_pretrained(*args, **kwargs)
        self.__class__ = own_class
        try:
            return super().save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = sharded_class


class GPTModel(GPTPreTrainedModel):
    """The bare GPT-2 transformer: embeddings, blocks and final LayerNorm, returning hidden states."""

    _input_embed_layer = "wte"

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPTBlock(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        r"""
        Args:
            input_ids: token ids, (batch, length), or with extra leading dimensions such as
                (batch, choices, length). With a cache, only the new tokens.
            cache: a `Cache` (e.g. `DynamicCache`, `StaticCache`) holding earlier keys and values.
                `past_key_values`, its older name, is accepted too.
            attention_mask: 1 for real tokens and 0 for padding, (batch, past + length); left or right padding.
            token_type_ids: optional ids embedded with `wte` and added, as GPT-2 does.
            position_ids: positions of the new tokens; by default they continue after the cache.
            inputs_embeds: token embeddings instead of `input_ids`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        # Like GPT-2, accept extra leading dimensions, and give the hidden states back in that shape.
        input_shape = input_ids.shape if inputs_embeds is None else inputs_embeds.shape[:-1]
        if inputs_embeds is None:
            input_ids = input_ids.view(-1, input_shape[-1])
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        # Only a sequence's start is checked for padding: a decoding step feeds each row its newest token, and
        # a row that has ended gets its end-of-text, which GPT-2's tokenizers also pad with. (A compiled graph
        # skips the check, as transformers' does, and must not branch on the cache's length.)
        if inputs_embeds is None and not is_torchdynamo_compiling() and past_length == 0:
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
        length = input_shape[-1]
        self._check_inputs(input_ids, position_ids, past_length, length)

        if inputs_embeds is None:
            # The chunked loss of GPTForCausalLM may ask the lookup to take over the tied head's gradient.
            inputs_embeds = embed_tokens(self.wte, input_ids, kwargs.pop("tied_head_gradient", None))
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device).unsqueeze(0) + past_length
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
            cache=cache,
            position_ids=position_ids,
        )
        for block in self.h:
            hidden_states = block(hidden_states, attention_mask=causal_mask, cache=cache, position_ids=position_ids, **kwargs)
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states.view(*input_shape, -1),
            cache=cache if use_cache else None,
        )

    def _check_inputs(self, input_ids, position_ids, past_length, length):
        """Clear errors for inputs that would otherwise fail deep inside (or silently read past a table)."""
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return  # data-dependent checks would break the graph; compiled and exported callers are trusted
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
            low, high = (int(t) for t in torch.aminmax(input_ids))
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"Token id {high if high >= self.config.vocab_size else low} is outside the vocabulary "
                    f"(vocab_size={self.config.vocab_size}). The tokenizer and the model disagree: use the model's "
                    f"own tokenizer, or call model.resize_token_embeddings(len(tokenizer)) after adding tokens."
                )
        if position_ids is not None and position_ids.numel() > 0 and int(position_ids.max()) >= self.config.n_positions:
            raise ValueError(
                f"position_ids reach {int(position_ids.max())} (prompt/cache {past_length} + new {length} "
                f"positions) but this model has n_positions={self.config.n_positions}, so positions must be "
                f"below {self.config.n_positions}. Truncate the input (or each packed document) to at most "
                f"{self.config.n_positions} tokens, or lower max_new_tokens."
            )


class GPTForCausalLM(GPTPreTrainedModel, GenerationMixin):
    """GPT-2 with its language-modelling head (tied to the token embedding)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.transformer = GPTModel(config)
        self.lm_head = GPTLinear(config.n_embd, config.vocab_size, bias=False)
        self.chunked_lm_loss = False
        self.post_init()

    def use_chunked_lm_loss(self, enabled: bool = True) -> "GPTForCausalLM":
        """Switch the memory-lean LM-head loss on (or off) for training-mode forwards with labels.

        When on, such a forward computes the loss chunk by chunk without materialising the
        full-vocabulary logits (see `speed_paths.chunked_causal_lm_loss`) and returns `logits=None`;
        evaluation, generation and forwards without labels are unchanged. A wrapped LM head (a PEFT
        layer, a forward hook) always runs its own forward. Off by default, as stock GPT-2 always
        returns logits; the setting is not saved with the model. Returns the model.
        """
        self.chunked_lm_loss = bool(enabled)
        return self

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        Args:
            labels: token ids to predict, (batch, length), shifted by one inside; -100 is ignored.
                As with transformers' loss, `shift_labels` (already aligned targets), `ignore_index`
                and `num_items_in_batch` may be passed as keyword arguments.
            logits_to_keep: if an int > 0, compute logits only for the last that many positions
                (generation uses 1); a tensor selects positions.
        """
        chunked = labels is not None and self.training and self.chunked_lm_loss and lm_head_is_plain(self.lm_head)
        tied = tied_head_gradient_for(self.transformer.wte, self.lm_head) if chunked and inputs_embeds is None else None
        outputs = self.transformer(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            tied_head_gradient=tied,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state

        logits, loss = None, None
        if chunked:
            loss = chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels, tied_gradient=tied, **kwargs)
        else:
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class GPTForSequenceClassification(GenericForSequenceClassification, GPTPreTrainedModel):
    """GPT-2 with a linear `score` head read at the last non-padding token (reward models use this).

    The forward and its loss are transformers' `GenericForSequenceClassification`.
    """

    base_model_prefix = "transformer"  # GPT-2's name for the body (the generic class says "model")

    def __init__(self, config: GPTConfig):
        # Not GenericForSequenceClassification.__init__: it builds the body with AutoModel.from_config,
        # which, where this file runs as remote code (hf_llm not installed), cannot resolve our config
        # without a trust_remote_code it is not given. The modules it would build are built here.
        GPTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.transformer = GPTModel(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()


__all__ = ["GPTPreTrainedModel", "GPTModel", "GPTForCausalLM", "GPTForSequenceClassification"]
