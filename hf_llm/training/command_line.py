"""The recipes' command line: `--config file.yaml` plus flags parsed into their argument dataclasses by
TRL's parser, a `--help` that starts with the recipe's own flags, unknown flags refused with the closest
known one, and one clear line instead of a traceback for bad input."""

import argparse
import copy
import dataclasses
import difflib
import inspect
import os
import re
import sys
import textwrap
import typing

import transformers
from trl import TrlParser

from .callbacks import NonFiniteLossError
from .errors import RecipeError


class RecipeHelpFormatter(argparse.HelpFormatter):
    """A recipe's `--help`: each flag once, its value's type, every default said once."""

    def _format_action_invocation(self, action):
        # Every flag also has a dashed spelling (`--max-steps`); the description says so once.
        shown = copy.copy(action)
        shown.option_strings = [o for o in action.option_strings if not _is_dashed_alias(o, action.option_strings)]
        return super()._format_action_invocation(shown)

    def _get_default_metavar_for_optional(self, action):
        # The value's type (`--max_steps INT`) says more than the flag's name again (`--max_steps MAX_STEPS`).
        name = getattr(action.type, "__name__", "")
        return "BOOL" if name == "string_to_bool" else name.upper() if name.isidentifier() else "VALUE"

    def _get_help_string(self, action):
        text = action.help or ""
        value = action.default
        if action.nargs == 0 or value is None or value is argparse.SUPPRESS or value == "":
            return text  # a switch, or unset: the help says what unset means
        if not re.search(r"\bdefault", text, re.IGNORECASE):
            return f"{text} (default: %(default)s)"
        # The library's text states its own default: name the value only where this recipe changed it.
        return text if value == getattr(action, "field_default", value) else f"{text} (this recipe: %(default)s)"

    def _fill_text(self, text, width, indent):
        # Paragraphs are refilled; indented ones (a recipe's example commands) are kept as written.
        fill = super()._fill_text
        return "\n\n".join(
            textwrap.indent(part, indent) if part.startswith(" ") else fill(part, width, indent)
            for part in text.strip("\n").split("\n\n")
        )


class RecipeParser(TrlParser):
    """TRL's parser of `--config file.yaml` plus flags, made for people: `--help` shows `--config` and
    the hf_llm groups first (a dataclass with an `_argument_group_name` is one titled group; the
    library's fields are grouped by the class that declares them, e.g. transformers.TrainingArguments),
    abbreviations are refused, and an unknown flag or YAML key is a `RecipeError` that names the
    closest known one."""

    def __init__(self, dataclass_types, description: str | None = None):
        self._groups = {}  # title -> (where it is listed, group)
        self._config_file = None
        usage = "%(prog)s [--config FILE.yaml] [--FLAG VALUE ...]"
        description = (description or "").strip() + (
            "\n\nFlags override the --config file, which overrides the defaults shown here. Every flag also "
            "takes dashes: --max-steps is --max_steps."
        )
        super().__init__(dataclass_types, usage=usage, description=description.strip(),
                         formatter_class=RecipeHelpFormatter, allow_abbrev=False)
        self.add_argument(
            "--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
            help="Flag values from a YAML file, one key per flag name (learning_rate: 1.0e-4); "
            "recipes/configs/ has examples.",
        )
        order = {title: position for title, (position, _) in self._groups.items()}
        self._action_groups.sort(key=lambda group: order.get(group.title, ()))  # argparse's own groups stay first

    def _add_dataclass_arguments(self, dtype):
        hints = typing.get_type_hints(dtype)
        for field in dataclasses.fields(dtype):
            if not field.init:
                continue
            field.type = hints[field.name]  # what HfArgumentParser expects: the resolved type, not a string
            first_new = len(self._actions)
            self._parse_dataclass_field(self._group_for(dtype, field.name), field)
            for action in self._actions[first_new:]:
                action.field_default = action.default  # before the recipe's defaults: see RecipeHelpFormatter
                if action.option_strings[0] == f"--no_{field.name}":
                    action.help = f"The same as --{field.name} false."

    def _group_for(self, dtype, name: str):
        """hf_llm's fields go to their dataclass's titled group, listed first; the library's to a group
        named after the class that declares them, listed after, the most specific class first."""
        position, mro = self.dataclass_types.index(dtype), dtype.__mro__
        declaring = next(i for i, c in enumerate(mro) if name in vars(c).get("__annotations__", {}))
        # A private base (TRL's _BaseConfig) is shown as the public class built on it (trl.SFTConfig).
        owner = mro[max(i for i in range(declaring + 1) if not mro[i].__name__.startswith("_"))]
        if hasattr(owner, "_argument_group_name"):
            title, order = dtype._argument_group_name, (1, position)
            description = (inspect.getdoc(dtype) or "").split("\n\n")[0]
        else:
            title, order = f"{owner.__module__.split('.')[0]}.{owner.__name__}", (2, position, mro.index(owner))
            description = None
        if title not in self._groups:
            self._groups[title] = (order, self.add_argument_group(title, description))
        return self._groups[title][1]

    def parse_args_and_config(self, args=None, **kwargs):
        args = [part for arg in (sys.argv[1:] if args is None else args)
                for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
        if args.count("--config") > 1:
            raise RecipeError("--config is given twice: give one YAML file, and flags for what should differ from it.")
        if "--config" in args:
            following = args[args.index("--config") + 1:]
            if not following or following[0].startswith("-"):
                raise RecipeError("--config needs a YAML file, e.g. --config recipes/configs/sft_lora_alpaca.yaml.")
            self._config_file = following[0]
        return super().parse_args_and_config(args, **kwargs)

    def set_defaults_with_config(self, **config):
        known = {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype) if f.init}
        unknown = [key for key in config if key not in known]
        if unknown:
            raise RecipeError("; ".join(
                f"unknown key `{key}` in {self._config_file}{_did_you_mean(key, known)}" for key in unknown
            ) + " (its keys are the flag names, which --help lists)")
        return super().set_defaults_with_config(**config)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        flags = [arg.split("=", 1)[0] for arg in extras if arg.startswith("-") and not _is_number(arg)]
        if flags:
            known = {_underscored(o) for action in self._actions for o in action.option_strings if o.startswith("--")}
            raise RecipeError("; ".join(
                f"unknown flag `{flag}`{_did_you_mean(_underscored(flag), known)}" for flag in flags
            ) + " (--help lists every flag)")
        if extras:
            raise RecipeError(f"unexpected value {extras[0]!r}: each value follows its flag, as in --max_steps 10.")
        return namespace, extras

    def error(self, message):
        # argparse's own errors (a bad value, a missing one) end as ours: one line, exit code 2.
        raise RecipeError(f"{message} (see --help)")


def _underscored(option: str) -> str:
    """`--max-steps` and `-max_steps` as the flag's one spelling in --help, `--max_steps`."""
    return "--" + option.lstrip("-").replace("-", "_")


def _is_dashed_alias(option: str, option_strings) -> bool:
    return option != _underscored(option) and _underscored(option) in option_strings


def _did_you_mean(name: str, known) -> str:
    """": did you mean `closest`?" for a misspelt name, or nothing when no known name is close.

    Of difflib's close names, the one sharing the longest start wins: flags are named by family
    (`--lora_...`), so `--lora_rank` means `--lora_r` rather than the more similar `--local_rank`."""
    close = difflib.get_close_matches(name, sorted(known), n=5)
    best = max(close, key=lambda candidate: len(os.path.commonprefix([name, candidate])), default=None)
    return f": did you mean `{best}`?" if best else ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_recipe_args(dataclass_types, defaults: dict, argv=None, description: str | None = None):
    """Parse `--config file.yaml` plus flags into the given dataclasses, after applying the recipe's defaults.

    Precedence: flags > YAML > recipe defaults > dataclass defaults. An unknown flag or YAML key, or a
    value the configs refuse, is a `RecipeError` that says what to change. `description` heads `--help`.
    """
    parser = RecipeParser(dataclass_types, description)
    parser.set_defaults(**defaults)
    try:
        return parser.parse_args_and_config(argv)
    except RecipeError:
        raise
    except ValueError as err:
        # The trainer configs check their values as they are built (e.g. --bf16 without a GPU that has it).
        raise RecipeError(str(err)) from None


def recipe_main(main, dataclass_types, defaults: dict, argv=None) -> int:
    """Parse the recipe's arguments and run `main`; bad input ends with one clear message and exit code 2.

    The recipe's module docstring (what it does, example commands) heads its `--help`."""
    from ..data import DataFormatError

    quiet_known_library_noise()
    try:
        groups = parse_recipe_args(dataclass_types, defaults, argv, description=main.__globals__.get("__doc__"))
        main(*groups)
    except (RecipeError, DataFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(3) from None
    return 0


def quiet_known_library_noise():
    """Silence, once and by name, the library messages a default run would repeat that no user action fixes.

    - TRL's SFTConfig and RewardConfig still default `gradient_checkpointing=True`, a name transformers
      5.24 deprecated for `activation_checkpointing` (it maps one onto the other): a FutureWarning at
      every parse. `--gradient_checkpointing` keeps working, so the warning tells the user nothing.
    - TRL and PEFT read the model's `is_gradient_checkpointing` and TRL's DPOTrainer calls
      `gradient_checkpointing_enable`/`_disable`, deprecated in transformers 5.24 for their `activation_` names: a
      FutureWarning from inside their code.
    - PEFT says at every save that it saves the resized token embeddings with the adapter, which an adapter
      trained with new tokens (a chat template's) must hold: that is what makes it load back.
    - `datasets` draws a progress bar for each fast in-memory pass TRL makes over the data (EOS,
      tokenizing, labels, truncation, filtering), a wall of bars before the training one.
    Everything else, our own warnings and errors included, still shows, from the main process.
    """
    import warnings

    import datasets

    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing_(en|dis)able` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Setting `save_embedding_layers` to `True` as the embedding layer has been resized")
    datasets.disable_progress_bars()
    if int(os.environ.get("RANK", "0")) != 0:
        # Under a multi-process launch every process runs the recipe; the main one speaks for all, so a
        # warning or a loading bar is not printed once per process. Errors still come from every process.
        warnings.filterwarnings("ignore")
        transformers.utils.logging.disable_progress_bar()
