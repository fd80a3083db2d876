"""Method options: types, bounds and unknown names are checked before anything runs."""

from __future__ import annotations

import pytest

from memft_bench.harness.core.errors import ConfigError
from memft_bench.methods.base import build_options


def test_method_options_coerce_and_default():
    o = build_options("lora", {"r": "4", "alpha": "8", "target_modules": "q_proj,v_proj"}, "methods.lora")
    assert (o.r, o.alpha, o.target_modules) == (4, 8.0, ["q_proj", "v_proj"])
    assert build_options("full", None, "methods.full").lr == 2e-5
    # a YAML-style list on the command line (--set 'lora.target_modules=[q_proj,v_proj]') is the same list
    assert build_options("lora", {"target_modules": "[q_proj, v_proj]"}, "m").target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("method", "values", "message"),
    [
        ("lora", {"r": 0}, r"methods\.lora\.r.*>= 1"),
        ("lora", {"rank": 4}, "unknown option 'rank'"),
        ("full", {"lr": -1}, r"lr.*>= 0"),
        ("galore", {"proj_type": "diagonal"}, "proj_type.*one of"),
        ("mezo", {"eps": "small"}, "eps"),
    ],
)
def test_bad_method_options_are_one_clear_error(method, values, message):
    with pytest.raises(ConfigError, match=message):
        build_options(method, values, f"methods.{method}")
