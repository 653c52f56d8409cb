"""Builders for small Hub-like checkpoints: stock transformers GPT-2 with random weights, saved locally."""

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

TINY = dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=100, eos_token_id=100)


def stock_config(**overrides) -> GPT2Config:
    return GPT2Config(**{**TINY, **overrides})


def save_stock_lm(path, seed=0, **overrides):
    """A stock GPT2LMHeadModel with random weights, saved like a Hub checkpoint; returns the model (eval)."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(stock_config(**overrides)).eval()
    # Random biases and LayerNorm parameters too, so a wrong conversion cannot hide behind zeros and ones.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.normal_(0.0, 0.1 if name.endswith("bias") else 1.0)
    model.save_pretrained(path)
    return model


def save_stock_classifier(path, seed=0, num_labels=2, pad_token_id=0, **overrides):
    torch.manual_seed(seed)
    config = stock_config(num_labels=num_labels, pad_token_id=pad_token_id, **overrides)
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(path)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def weights_digest(model) -> str:
    """sha256 over the trainable parameters (names and values): equal digests mean equal replicas."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
