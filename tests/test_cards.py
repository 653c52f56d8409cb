"""The packaged base carries our model as remote code, so a folder holding a copy of it loads without hf_llm."""

import json
from pathlib import Path

from hf_llm.training import DEFAULT_BASE_MODEL


def test_packaged_base_carries_the_package_remote_code(tmp_path):
    """The packaged base holds the remote code save_pretrained writes today (same files, byte for byte) and
    offers every class a recipe loads it as."""
    from hf_llm import GPTConfig, GPTForCausalLM

    GPTForCausalLM(GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    written = sorted(p.name for p in tmp_path.glob("*.py"))
    packaged = Path(DEFAULT_BASE_MODEL)
    assert written and sorted(p.name for p in packaged.glob("*.py")) == written
    for name in written:
        assert (packaged / name).read_bytes() == (tmp_path / name).read_bytes(), (
            f"{packaged / name} is stale: copy hf_llm/models/gpt/{name} there (see its README)"
        )
    config = json.loads((packaged / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_gpt.GPTConfig",
        "AutoModel": "modeling_gpt.GPTModel",
        "AutoModelForCausalLM": "modeling_gpt.GPTForCausalLM",
        "AutoModelForSequenceClassification": "modeling_gpt.GPTForSequenceClassification",
    }
