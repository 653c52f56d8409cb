"""Configuration of the hf_llm GPT model.

`GPTConfig` accepts every field of transformers' `GPT2Config` under the same name and with the same
default, so a `config.json` written for stock GPT-2 loads unchanged. This file imports only
transformers, because it also ships next to saved checkpoints as Hub remote code.
"""

import json

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

# Activations the model can build: every name in transformers' ACT2FN, as for stock GPT-2.
SUPPORTED_ACTIVATIONS = tuple(sorted(ACT2FN))

# The model type written to config.json: transformers' own GPT-2 (see GPTConfig.to_json_file).
GPT2_MODEL_TYPE = "gpt2"

# The four published GPT-2 sizes. Parameter counts are those of the released checkpoints, with
# the LM head tied to the token embedding (so it is counted once).
GPT2_PRESETS = {
    "gpt2-124m": {"n_embd": 768, "n_layer": 12, "n_head": 12, "parameters": 124_439_808},
    "gpt2-355m": {"n_embd": 1024, "n_layer": 24, "n_head": 16, "parameters": 354_823_168},
    "gpt2-774m": {"n_embd": 1280, "n_layer": 36, "n_head": 20, "parameters": 774_030_080},
    "gpt2-1558m": {"n_embd": 1600, "n_layer": 48, "n_head": 25, "parameters": 1_557_611_200},
}
# The Hub's names for the same sizes.
GPT2_PRESET_ALIASES = {"gpt2": "gpt2-124m", "gpt2-medium": "gpt2-355m", "gpt2-large": "gpt2-774m", "gpt2-xl": "gpt2-1558m"}


class GPTConfig(PretrainedConfig):
    r"""Configuration of [`GPTModel`], [`GPTForCausalLM`] and [`GPTForSequenceClassification`].

    Field names and defaults are GPT-2's (the defaults give the 124M model), and the standard
    aliases `hidden_size`, `num_attention_heads`, `num_hidden_layers` and
    `max_position_embeddings` read and write the GPT-2 names.

    Args:
        vocab_size: number of tokens in the vocabulary.
        n_positions: longest sequence the model accepts (learned position embeddings).
        n_embd: width of the residual stream.
        n_layer: number of transformer blocks.
        n_head: attention heads per block; must divide `n_embd`.
        n_inner: width of the MLP; `None` means `4 * n_embd`.
        activation_function: MLP activation, one of `SUPPORTED_ACTIVATIONS`.
        resid_pdrop, embd_pdrop, attn_pdrop: dropout after each residual branch, on the
            embeddings, and on the attention probabilities.
        layer_norm_epsilon: epsilon of every LayerNorm.
        initializer_range: standard deviation of the normal weight initialisation.
        scale_attn_weights: divide attention scores by sqrt(head_dim).
        scale_attn_by_inverse_layer_idx: also divide them by (layer index + 1).
        reorder_and_upcast_attn: compute scores and softmax in float32 under mixed precision.
        summary_*: fields of GPT-2's multiple-choice summary head, kept for config compatibility.

    Example:

    ```python
    >>> from hf_llm import GPTConfig, GPTForCausalLM
    >>> config = GPTConfig.from_preset("gpt2-124m")
    >>> tiny = GPTConfig(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64)
    ```
    """

    model_type = "hf_llm_gpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # Trainer leaves the KV cache out of predictions
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float | int = 0.1
    embd_pdrop: float | int = 0.1
    attn_pdrop: float | int = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    summary_type: str = "cls_index"
    summary_use_proj: bool = True
    summary_activation: str | None = None
    summary_proj_to_labels: bool = True
    summary_first_dropout: float | int = 0.1
    scale_attn_weights: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # A stock GPT-2 config.json says model_type "gpt2"; the fields are ours, so the type is ours.
        kwargs.pop("model_type", None)
        # Stock GPT-2 configs carry this; the model has no cross-attention, so refuse it if set.
        if kwargs.pop("add_cross_attention", False):
            raise ValueError(
                "GPTConfig: add_cross_attention=True is not supported (hf_llm's GPT is decoder-only). "
                "Remove it from the config."
            )
        super().__post_init__(**kwargs)
        self._check_sizes()

    def _check_sizes(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {value!r}. Set {name} to a value > 0.")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ValueError(
                f"GPTConfig: n_inner must be a positive integer or None (for 4 * n_embd), got {self.n_inner!r}."
            )
        if self.n_embd % self.n_head != 0:
            divisors = [h for h in range(1, min(self.n_embd, 64) + 1) if self.n_embd % h == 0]
            raise ValueError(
                f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}). "
                f"Change n_head to a divisor of n_embd (e.g. one of {divisors[-6:]}) or change n_embd "
                f"to a multiple of n_head (e.g. {self.n_head * max(1, round(self.n_embd / self.n_head))})."
            )
        if self.activation_function not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"GPTConfig: unknown activation_function {self.activation_function!r}. "
                f"Use one of {', '.join(SUPPORTED_ACTIVATIONS)}."
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"GPTConfig: {name} must be in [0, 1), got {value!r}.")

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        # Stock GPT-2 configs are ours field for field: read them without a model-type warning.
        if config_dict.get("model_type") == GPT2_MODEL_TYPE:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def to_json_file(self, json_file_path, use_diff: bool = True):
        """Write config.json with `model_type: gpt2`.

        The fields and the weight layout are GPT-2's, so any transformers reads a saved folder as
        stock GPT-2 with no custom code: `AutoTokenizer` and `AutoModelForCausalLM` load it without
        hf_llm and without a trust-remote-code prompt (which an unknown model type always raises,
        even for the tokenizer). The `auto_map` still offers this model as remote code
        (`trust_remote_code=True`), and `GPTForCausalLM.from_pretrained` reads the file as ours.
        """
        config_dict = {**json.loads(self.to_json_string(use_diff=use_diff)), "model_type": GPT2_MODEL_TYPE}
        with open(json_file_path, "w", encoding="utf-8") as file:
            file.write(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """A config for one of the published GPT-2 sizes.

        `name` is one of `gpt2-124m`, `gpt2-355m`, `gpt2-774m`, `gpt2-1558m` (or the Hub's
        `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`); keyword arguments override fields.
        """
        key = GPT2_PRESET_ALIASES.get(name, name)
        if key not in GPT2_PRESETS:
            known = ", ".join([*GPT2_PRESETS, *GPT2_PRESET_ALIASES])
            raise ValueError(f"Unknown GPT-2 preset {name!r}. Known presets: {known}.")
        sizes = {k: v for k, v in GPT2_PRESETS[key].items() if k != "parameters"}
        return cls(**{**sizes, **overrides})


__all__ = ["GPTConfig", "GPT2_PRESETS", "GPT2_PRESET_ALIASES", "SUPPORTED_ACTIVATIONS"]
