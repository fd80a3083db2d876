"""The registry: built-ins, the decorator, and third-party plugins through entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from memft_bench.harness.core.errors import UnknownNameError
from memft_bench.harness.core.options import option
from memft_bench.methods.base import (
    MethodOptions,
    OptimizerMethod,
    available_methods,
    create,
    get_method_class,
    register,
)

BUILTINS = {"full", "lora", "dora", "galore", "mezo"}


def test_builtins_are_listed_without_importing_their_modules():
    code = "import sys; from memft_bench.methods.base import available_methods; n = available_methods(); " \
           "print(sorted(n)); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, imported = out.strip().splitlines()
    assert set(ast.literal_eval(names)) >= BUILTINS
    assert imported == "False False"


def test_every_builtin_resolves_to_a_method_class():
    for name in BUILTINS:
        assert get_method_class(name).name == name


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match="unknown method 'sgd'.*full.*lora"):
        get_method_class("sgd")


def test_decorator_registers_a_new_method():
    import torch

    @dataclass
    class SgdOptions(MethodOptions):
        momentum: float = option(0.0, "momentum", min=0.0)

    @register("test-sgd")
    class Sgd(OptimizerMethod):
        """Plain SGD, registered by a test."""

        Options = SgdOptions

        def prepare(self, model):
            self.model = model
            self.optimizer = self.build_optimizer()

        def build_optimizer(self):
            return torch.optim.SGD(self.model.parameters(), lr=self.options.lr, momentum=self.options.momentum)

    assert "test-sgd" in available_methods()
    method = create("test-sgd", {"lr": "0.5"}, loss_fn=None)
    assert isinstance(method, Sgd) and method.options.lr == 0.5


def test_entry_point_plugin_is_found_without_editing_the_registry(tmp_path):
    """A package installed elsewhere declares `[project.entry-points."bench.methods"]`; bench finds it."""
    pkg = tmp_path / "bench_plugin_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from memft_bench.methods.base import OptimizerMethod

        class PluginSgd(OptimizerMethod):
            """SGD from a plugin package."""

            def prepare(self, model):
                self.model = model
                self.optimizer = self.build_optimizer()

            def build_optimizer(self):
                return torch.optim.SGD(self.model.parameters(), lr=self.options.lr)
    '''))
    dist = tmp_path / "bench_plugin_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-plugin-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bench.methods]\nplugin-sgd = bench_plugin_demo:PluginSgd\n")
    code = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from memft_bench.methods.base import available_methods, get_method_class
        assert "plugin-sgd" in available_methods(), available_methods()
        assert "torch" not in sys.modules  # listing does not load the plugin
        cls = get_method_class("plugin-sgd")
        print(cls.__name__, cls.name)
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PluginSgd", "plugin-sgd"]


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_prepare_keeps_the_base_function_when_the_method_says_so(name, tiny_model_and_batch):
    """The untrained score is shared across methods on this claim (harness.trial.worker.untrained_score)."""
    import torch

    from memft_bench.harness.trial.models import causal_lm_loss

    if name == "adalomo":
        pytest.skip("lomo-optim's AdaLomo runs on CUDA only")
    model, _, batch = tiny_model_and_batch
    model.eval()
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    fits = {"smt": {"block_size": 8}, "apollo": {"rank": 4}}  # fit width 32
    method = create(name, fits.get(name, {}), causal_lm_loss, seed=0)
    method.prepare(model)
    assert method.keeps_base_function
    method.model.eval()
    with torch.no_grad():
        after = method.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
