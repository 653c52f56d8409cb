"""Export an hf_llm checkpoint as a plain `model_type: gpt2` checkpoint.

Checkpoints saved by hf_llm already load into stock `GPT2LMHeadModel`: the weights are written in
GPT-2's layout and config.json says `model_type: gpt2`. They still name our classes in
`architectures` and carry an `auto_map` and our remote-code files, so tools that dispatch on the
architecture (llama.cpp's GGUF converter, serving engines) do not recognise them.
`export_to_gpt2` writes a checkpoint that is GPT-2 in every respect.

Command line: `hf-llm-export-gpt2 SOURCE OUTPUT_DIR` (or `python -m hf_llm.export ...`).
"""

import argparse
import tempfile
from pathlib import Path

from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from .folders import write_folder_atomically
from .models.gpt import GPTForCausalLM, GPTForSequenceClassification


def export_to_gpt2(model, output_dir, tokenizer=None, overwrite: bool = False) -> Path:
    """Write `model` (a GPTForCausalLM or GPTForSequenceClassification, or a folder holding one) as
    a stock GPT-2 checkpoint in `output_dir`.

    The folder is assembled beside `output_dir` and moved into place only when complete, so a failure
    leaves nothing half-written. Returns the output path.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir} is not empty; choose another folder or pass overwrite=True (--overwrite on the command line)."
        )
    if isinstance(model, (str, Path)):
        source = Path(model)
        if (source / "adapter_config.json").is_file():
            raise ValueError(
                f"{source} holds a LoRA adapter, not a model. Export a model with the adapter merged in: run the "
                f"recipe with --merge_adapter true (it writes a merged/ folder), or merge it yourself with PEFT's "
                f"merge_and_unload() and save_pretrained, then export that folder."
            )
        architectures = GPT2Config.get_config_dict(str(source))[0].get("architectures") or []
        cls = GPTForSequenceClassification if any("SequenceClassification" in a for a in architectures) else GPTForCausalLM
        model = cls.from_pretrained(source)
    if isinstance(model, GPTForSequenceClassification):
        stock_cls = GPT2ForSequenceClassification
    elif isinstance(model, GPTForCausalLM):
        stock_cls = GPT2LMHeadModel
    else:
        raise TypeError(f"export_to_gpt2 takes a GPTForCausalLM or GPTForSequenceClassification, got {type(model).__name__}.")
    if any(name.endswith(".base_layer") for name, _ in model.named_modules()):
        raise ValueError(
            "The model has LoRA adapters injected; GPT-2 has no place for them. Merge them first "
            "(hf_llm.lora.merge_and_unload_lora(model), or PEFT's merge_and_unload()) and export the result."
        )

    def write(staging: Path):
        with tempfile.TemporaryDirectory() as ours_dir:
            model.save_pretrained(ours_dir)
            fields = {k: v for k, v in model.config.to_dict().items() if k not in ("auto_map", "architectures", "model_type")}
            # llama.cpp's GGUF converter reads the context length as n_ctx, which transformers 5 writes
            # only for configs that came with one (the Hub's GPT-2 files do; a model trained from scratch not).
            config = GPT2Config.from_dict({**fields, "n_ctx": model.config.n_positions})
            stock_cls.from_pretrained(ours_dir, config=config).save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)

    write_folder_atomically(output_dir, write, replace=True)
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="folder of an hf_llm checkpoint")
    parser.add_argument("output_dir", help="folder to write the GPT-2 checkpoint to")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    args = parser.parse_args(argv)
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.source)
    except (OSError, ValueError):
        pass  # a checkpoint without tokenizer files
    try:
        path = export_to_gpt2(args.source, args.output_dir, tokenizer=tokenizer, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:
        parser.error(str(err).replace("overwrite=True (--overwrite on the command line)", "--overwrite"))
    print(f"wrote a model_type=gpt2 checkpoint to {path}")


if __name__ == "__main__":
    main()
