"""Suite files and overrides: valid ones load, invalid ones fail with a message naming the field."""

from __future__ import annotations

import pytest

from memft_bench.harness.core.errors import ConfigError, UnknownNameError
from memft_bench.harness.core.fingerprint import fingerprint
from memft_bench.harness.spec.config import (
    apply_overrides,
    list_suites,
    load_suite,
    parse_override,
    suite_from_data,
)


def test_builtin_tiny_suite_loads_and_is_listed():
    suite = load_suite("tiny")
    assert suite.name == "tiny"
    assert {"full", "lora", "dora", "galore", "mezo"} <= set(suite.default_methods)
    assert "tiny" in list_suites()
    assert suite.model.pretrain_steps > 0


def test_unknown_suite_names_the_available_ones():
    with pytest.raises(UnknownNameError, match="unknown suite 'nope'.*tiny"):
        load_suite("nope")


def test_suite_file_errors_name_file_and_field(tmp_path, suite_data):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntasks: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_suite(str(bad))
    suite_data["budget"]["steps"] = 0
    with pytest.raises(ConfigError, match=r"budget\.steps.*>= 1"):
        suite_from_data(suite_data, "s.yaml")
    suite_data["budget"]["steps"] = 3
    suite_data["budget"]["stpes"] = 3
    with pytest.raises(ConfigError, match="stpes"):
        suite_from_data(suite_data, "s.yaml")
    with pytest.raises(ConfigError, match="suite file not found"):
        load_suite(str(tmp_path / "missing.yaml"))


def test_model_and_task_cross_checks(suite_data):
    suite_data["model"]["num_attention_heads"] = 3
    with pytest.raises(ConfigError, match="num_attention_heads: must divide hidden_size"):
        suite_from_data(suite_data, "s")
    suite_data["model"]["num_attention_heads"] = 4
    suite_data["tasks"][0]["generator"] = "nonesuch"
    with pytest.raises(ConfigError, match="generator: must be one of"):
        suite_from_data(suite_data, "s")


def test_overrides_coerce_strings_and_validate(small_suite):
    suite = apply_overrides(small_suite, ["lora.r=16", "budget.steps=7", "full.lr=1e-3"])
    assert suite.budget.steps == 7
    assert suite.methods["lora"] == {"r": "16"}  # method options are validated by the method's own schema
    with pytest.raises(ConfigError, match=r"budget\.steps"):
        apply_overrides(small_suite, ["budget.steps=many"])
    with pytest.raises(ConfigError, match="expected METHOD.OPTION=VALUE"):
        parse_override("lora_r=16")


def test_fingerprint_is_stable_and_sensitive():
    a = fingerprint({"x": 1, "y": [1, 2]})
    assert a == fingerprint({"y": [1, 2], "x": 1})
    assert a != fingerprint({"x": 2, "y": [1, 2]})


def test_config_and_pretrained_labels_import_neither_torch_nor_the_model_code():
    """No import circle config -> pretrained -> models -> config: the cache location lives in a torch-free
    module, so reading a suite (as `bench list` and `--help` do) stays fast."""
    import subprocess
    import sys

    code = ("import sys; from memft_bench.harness.spec.config import ModelSpec, load_suite; load_suite('commonsense'); "
            "print(ModelSpec(kind='pretrained', path='smollm2-135m').label); "
            "print(sorted(m for m in ('torch', 'memft_bench.harness.trial.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]", out
