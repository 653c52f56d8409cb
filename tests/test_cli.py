"""The recipes' command line: what `--help` shows, and what an unknown flag or YAML key gets."""

import dataclasses
import re
import runpy

import pytest

from test_recipes import RECIPES, run_recipe

NAMES = ["chat", "dpo", "generate", "pretrain", "reward_modeling", "rl", "sft_lora"]


def recipe_help(name: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_:
        run_recipe(name, "--help")
    assert exit_.value.code == 0
    return capsys.readouterr().out


def after_description(help_text: str) -> list[str]:
    """The lines of `--help` from argparse's first group ("options:") on."""
    return ("options:\n" + help_text.split("\noptions:\n", 1)[1]).splitlines()


def group_titles(help_text: str) -> list[str]:
    return [line[:-1] for line in after_description(help_text) if re.fullmatch(r"\S.*:", line)]


def flag_entries(help_text: str) -> dict[str, str]:
    """{flag: its entry (the flag, its value and its help) on one line} for each flag `--help` lists."""
    entries, flag = {}, None
    for line in after_description(help_text):
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            assert flag not in entries, f"{flag} is listed twice"
            entries[flag] = " ".join(line.split())
        elif line.startswith("   ") and flag:
            entries[flag] += " " + line.strip()
        else:
            flag = None  # a group's title or description
    return entries


def recipe_fields(recipe: dict) -> set[str]:
    return {f"--{f.name}" for dtype in recipe["DATACLASS_TYPES"] for f in dataclasses.fields(dtype) if f.init}


@pytest.mark.parametrize("name", NAMES)
def test_help_lists_config_and_the_recipes_own_groups_first(name, capsys, monkeypatch):
    recipe = runpy.run_path(str(RECIPES / f"{name}.py"))
    text = recipe_help(name, capsys, monkeypatch)
    own = [dtype._argument_group_name for dtype in recipe["DATACLASS_TYPES"] if hasattr(dtype, "_argument_group_name")]
    titles = group_titles(text)
    assert titles[: len(own) + 1] == ["options", *own]
    assert all(re.fullmatch(r"(trl|transformers)\.\w+", title) for title in titles[len(own) + 1 :]), titles
    assert text.startswith(f"usage: {name}.py [--config FILE.yaml]")
    assert recipe["__doc__"].split("\n")[0] in " ".join(text.split())  # the recipe says what it does
    entries = flag_entries(text)
    assert "YAML" in entries["--config"]
    assert recipe_fields(recipe) <= set(entries)  # every flag is still there, each listed once


@pytest.mark.parametrize("name", NAMES)
def test_help_says_each_default_once_and_it_is_the_recipes(name, capsys, monkeypatch):
    recipe = runpy.run_path(str(RECIPES / f"{name}.py"))
    entries = flag_entries(recipe_help(name, capsys, monkeypatch))
    own = {f"--{f.name}" for dtype in recipe["DATACLASS_TYPES"] if hasattr(dtype, "_argument_group_name")
           for f in dataclasses.fields(dtype)}
    for flag, entry in entries.items():
        mentions = len(re.findall(r"\bdefault", entry, re.IGNORECASE))
        if "(default: " in entry or flag in own:
            assert mentions <= 1, entry
    for key, value in recipe["DEFAULTS"].items():
        shown = re.search(r"\((?:default|this recipe): (.*)\)$", entries[f"--{key}"])
        if shown:
            assert "".join(shown.group(1).split()) == "".join(str(value).split()), (key, entries[f"--{key}"])
        else:  # only where the library's own text states its default, and the recipe keeps it
            assert re.search(r"\bdefault", entries[f"--{key}"], re.IGNORECASE), entries[f"--{key}"]
    if name == "sft_lora":
        assert entries["--lora_r"].endswith("(default: 4)") and entries["--learning_rate"].endswith("(default: 0.0006)")


@pytest.mark.parametrize("name", NAMES)
def test_negated_flags_say_what_they_do(name, capsys, monkeypatch):
    entries = flag_entries(recipe_help(name, capsys, monkeypatch))
    negations = [flag for flag in entries if flag.startswith("--no_") and "--" + flag[5:] in entries]
    assert negations
    for flag in negations:
        assert entries[flag] == f"{flag} The same as --{flag[5:]} false."


def test_generate_help_shows_only_what_generation_uses(capsys, monkeypatch):
    recipe = runpy.run_path(str(RECIPES / "generate.py"))
    entries = flag_entries(recipe_help("generate", capsys, monkeypatch))
    training_only = ["--use_peft", "--lora_r", "--load_in_4bit", "--model_revision", "--n_layer", "--output_dir",
                     "--learning_rate", "--dataset_name", "--block_size", "--sample_prompts"]
    assert not set(training_only) & set(entries)
    assert set(entries) == {"-h", "--config", "--no_stream"} | recipe_fields(recipe)
    assert "'scratch'" not in entries["--model_name_or_path"] and "'bpe'" not in entries["--tokenizer_name_or_path"]


@pytest.mark.parametrize("argv, message", [
    (["--lora_rank", "8"], "unknown flag `--lora_rank`: did you mean `--lora_r`?"),
    (["--max_step", "3"], "unknown flag `--max_step`: did you mean `--max_steps`?"),  # no abbreviation
    (["--max-step", "3"], "unknown flag `--max-step`: did you mean `--max_steps`?"),
    (["--max_steps", "ten"], "argument --max_steps/--max-steps: invalid int value: 'ten'"),
    (["--max_steps", "3", "ten"], "unexpected value 'ten'"),
    (["--config"], "--config needs a YAML file"),
])
def test_a_flag_error_is_one_line_naming_the_fix(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        run_recipe("sft_lora", "--output_dir", str(out), *argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_a_misspelt_yaml_key_gets_the_closest_one(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1.0e-3\nlora_rank: 8\n")
    with pytest.raises(SystemExit) as exit_:
        run_recipe("sft_lora", "--config", str(config), "--output_dir", str(tmp_path / "out"))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: unknown key `lora_rank` in {config}: did you mean `lora_r`? " \
                                      "(its keys are the flag names, which --help lists)\n"
    assert not (tmp_path / "out").exists()


def test_dashed_flags_and_config_with_equals_still_parse(tmp_path):
    from hf_llm.training.command_line import parse_recipe_args

    recipe = runpy.run_path(str(RECIPES / "generate.py"))
    config = tmp_path / "gen.yaml"
    config.write_text("max_new_tokens: 7\n")
    _, gen_args, _ = parse_recipe_args(recipe["DATACLASS_TYPES"], recipe["DEFAULTS"],
                                       [f"--config={config}", "--num-beams", "3", "--no_stream"])
    assert (gen_args.max_new_tokens, gen_args.num_beams, gen_args.stream) == (7, 3, False)
