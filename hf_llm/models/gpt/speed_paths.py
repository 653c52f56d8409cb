"""The speed paths of hf_llm's GPT, kept apart from the architecture in `modeling_gpt.py`.

Each computes exactly what the plain module or function it replaces computes (tests compare them with
stock GPT-2), only faster or in less memory on the hardware named, and each stays only while a row of
the README's benchmark table shows it earns at least 5% there:

- `GPTLinear`, the few-row matrix product: decoding, where each projection sees one or a few rows
  (row "greedy generation ..., batch 8" with and without it: `bench_generate.py --ablate few_rows`).
- `chunked_causal_lm_loss` with `TiedHeadGradient`, the lean LM-head loss: training steps of models
  whose LM head and vocabulary dominate (row "training, width 256 ..."; opt-in, see
  `GPTForCausalLM.use_chunked_lm_loss`; without it and without its gradient handover:
  `bench_train.py --lm-loss plain` and `--lm-loss chunked-no-tied`).

An in-place KV cache was measured the same way and removed: it earned 2% of the batch-8 generation
row, below the bar.

Like the modeling file, this module imports only torch and transformers: it ships with saved
checkpoints as Hub remote code.
"""

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------------
# Decoding: the few-row product
# --------------------------------------------------------------------------------------------------


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
    More than `few_rows` rows, other devices, torch.compile and torch.export take `F.linear`. Still an
    `nn.Linear`: PEFT/LoRA wrap it as usual.
    """

    few_rows: int = 64  # inputs of at most this many rows choose their product
    few_rows_product: str | None = None  # "plain" or "transposed" to force one; None: the faster
    few_rows_choices: dict = {}  # (out, in, bias, rows rounded up, dtype, threads) -> "plain" | "transposed"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # Compiled and exported graphs take F.linear before the row count is read: a symbolic count
        # compared here would tie the graph to few-row inputs (torch.export would guard batch x length).
        if input.device.type != "cpu" or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return F.linear(input, self.weight, self.bias)
        rows = input.numel() // self.in_features if self.in_features else 0
        if not 0 < rows <= self.few_rows:
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


# --------------------------------------------------------------------------------------------------
# Training: the chunked LM-head loss
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
                "handed on once. Compute the loss again, or switch it off with model.use_chunked_lm_loss(False)."
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
    **kwargs,
) -> torch.Tensor:
    """Next-token cross-entropy without materialising the full-vocabulary logits.

    Equal to `ForCausalLMLoss(hidden_states @ lm_head_weight.T, labels)`: labels are shifted by one
    inside (or `shift_labels`, already aligned with the positions, are used as given, as in
    transformers), positions labelled `ignore_index` are skipped, and the sum is divided by the number
    of counted tokens, or by `num_items_in_batch` when the Trainer passes it (gradient accumulation).
    Any other target outside the vocabulary raises a ValueError.
    With `tied_gradient`, the weight's gradient goes to that holder instead (see `TiedHeadGradient`).
    Other keyword arguments (the model's forward passes all of its own on) are ignored, as in
    transformers' `ForCausalLMLoss`.
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


def lm_head_is_plain(lm_head: nn.Module) -> bool:
    """Whether `lm_head` computes exactly `hidden @ weight.T`, so the chunked loss may read its weight.

    A wrapped head (a PEFT LoRA layer, a forward hook, accelerate's replaced forward) runs its own forward.
    """
    return _runs_its_own_forward(lm_head, (nn.Linear, GPTLinear)) and lm_head.bias is None


def tied_head_gradient_for(wte: nn.Module, lm_head: nn.Module) -> TiedHeadGradient | None:
    """A `TiedHeadGradient` when the chunked loss may hand the tied weight's gradient to the lookup, else None.

    Only for a plain `nn.Embedding` whose trained weight is the LM head's, on CPU (where it is measured
    to pay), in eager mode with gradients on.
    """
    usable = (
        _runs_its_own_forward(wte, (nn.Embedding,))
        and wte.padding_idx is None
        and wte.max_norm is None
        and not wte.scale_grad_by_freq
        and not wte.sparse
        and wte.weight is getattr(lm_head, "weight", None)
        and wte.weight.requires_grad
        and wte.weight.device.type == "cpu"
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )
    return TiedHeadGradient() if usable else None


def embed_tokens(wte: nn.Embedding, input_ids: torch.Tensor, tied: TiedHeadGradient | None) -> torch.Tensor:
    """`wte(input_ids)`; with `tied`, the weight's gradient is added into the one the chunked loss hands over."""
    if tied is None:
        return wte(input_ids)
    return _TokenEmbedding.apply(input_ids, wte.weight, tied)
