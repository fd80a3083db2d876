"""SGC, MESGC, CESGC: the step against an unbatched reference of the paper's equations, against dense AdamW
where compressed sensing recovers the moments exactly, and the state against its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp

from memft_bench.harness.core.errors import ConfigError
from memft_bench.methods.base import Batch, create
from tests.toy import Toy, quadratic_loss, reference_grads, toy_batch


def _method(name: str, **options):
    values = {"k": 20, "s": 3, "lr": 0.01, "target_modules": ["q_proj"], "store_projection": True, **options}
    return create(name, values, quadratic_loss, seed=0)


@pytest.mark.parametrize(
    "options",
    [{}, {"fused": False}, {"workspace_mb": 0.005, "store_projection": False},
     {"workspace_mb": 0.005, "sensing": "gaussian"}],
    ids=["fused", "unfused", "streamed-block-permuted", "streamed-gaussian"],
)
def test_step_matches_an_unbatched_reference_of_the_equations(options):
    """Two steps: top-s sparsification, p/q moments in R^k, OMP (scikit-learn) for m^, least squares for v^.
    A tiny workspace splits A into blocks (streamed OMP); the reference uses the dense A they define."""
    model = Toy()
    w = model.q_proj.weight.detach().double().numpy().reshape(-1).copy()
    method = _method("sgc", **options)
    method.prepare(model)
    A = method.projection(48, torch.device("cpu")).double().numpy()
    b1, b2, eps, lr, s = 0.9, 0.999, 1e-8, 0.01, 3
    p = np.zeros(20)
    q = np.zeros(20)
    for t in (1, 2):
        batch = toy_batch(seed=t)
        g = reference_grads(model, batch)["q_proj.weight"].double().numpy().reshape(-1)
        keep = np.argsort(-np.abs(g))[:s]
        g_s = np.zeros_like(g)
        g_s[keep] = g[keep]
        p = b1 * p + (1 - b1) * A @ g_s
        q = b2 * q + (1 - b2) * A @ (g_s * g_s)
        p_hat, q_hat = p / (1 - b1**t), q / (1 - b2**t)
        m_hat = orthogonal_mp(A, p_hat, n_nonzero_coefs=s)
        support = np.flatnonzero(m_hat)
        v_s = np.linalg.lstsq(A[:, support], q_hat, rcond=None)[0]
        update = np.zeros_like(g)
        ok = v_s > 0
        update[support[ok]] = m_hat[support[ok]] / (np.sqrt(v_s[ok]) + eps)
        w = w - lr * update
        method.step(batch)
        if options.get("workspace_mb"):
            assert method.operator.n_blocks > 1
        np.testing.assert_allclose(model.q_proj.weight.detach().double().numpy().reshape(-1), w, rtol=1e-4, atol=1e-6)
    assert model.norm.requires_grad is False  # not a target: frozen


def _sparse_problem(weight: torch.nn.Parameter, coords: list[int], targets: torch.Tensor):
    """A loss that only touches `coords` of the weight: its gradients, and so Adam's moments, stay s-sparse."""

    def loss_fn(model, mb):
        w = model.q_proj.weight.reshape(-1)
        return 0.5 * ((w[coords] - targets) ** 2).sum(), 1

    mb = {"labels": torch.zeros(1, 1, dtype=torch.long), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
    return loss_fn, Batch([mb])


def test_equals_dense_adamw_when_the_moments_are_recoverable():
    coords, targets = [3, 17, 40], torch.tensor([1.0, -2.0, 0.5])
    dense_model, sgc_model = Toy(), Toy()
    loss_fn, batch = _sparse_problem(dense_model.q_proj.weight, coords, targets)
    dense = torch.optim.AdamW([dense_model.q_proj.weight], lr=0.05, weight_decay=0.0, eps=1e-8)
    sgc = create("sgc", {"k": 24, "s": 3, "lr": 0.05, "target_modules": ["q_proj"]}, loss_fn, seed=1)
    sgc.prepare(sgc_model)
    for _ in range(10):
        loss_fn(dense_model, None)[0].backward()
        dense.step()
        dense.zero_grad()
        sgc.step(batch)
    torch.testing.assert_close(sgc_model.q_proj.weight, dense_model.q_proj.weight, rtol=1e-4, atol=1e-5)
    assert sgc.metrics["relative_recovery_error"] < 1e-4


def test_state_elements_match_the_formula():
    m, n, k, s = 8, 6, 20, 3
    sgc = _method("sgc", k=k, s=s)
    sgc.prepare(Toy(n_in=n, n_out=m))
    assert sgc.state_elements() == {"trainable_params": m * n, "gradients": m * n, "exp_avg": k, "exp_avg_sq": k,
                                    "projection": k * m * n}
    sgc = _method("sgc", k=k, s=s, store_projection=False)
    sgc.prepare(Toy(n_in=n, n_out=m))
    assert "projection" not in sgc.state_elements()  # regenerated from its seed, never kept

    mesgc = _method("mesgc", k=8, s=2, chunk_size=10)  # 48 entries -> 5 chunks sharing one 8 x 10 A
    mesgc.prepare(Toy(n_in=n, n_out=m))
    state = mesgc.state_elements()
    assert state["exp_avg"] == state["exp_avg_sq"] == 5 * 8 and state["projection"] == 8 * 10

    r = 2
    cesgc = _method("cesgc", k=10, s=2, rank=r)
    cesgc.prepare(Toy(n_in=n, n_out=m))
    cesgc.step(toy_batch())
    state = cesgc.state_elements()  # m >= n: P is n x r, R is m x r
    assert state["exp_avg"] == 10 and state["projector"] == n * r and state["projection"] == 10 * m * r


def test_mesgc_updates_chunks_in_place():
    model = Toy()
    before = model.q_proj.weight.detach().clone()
    mesgc = _method("mesgc", k=8, s=2, chunk_size=10, lr=0.1)
    mesgc.prepare(model)
    mesgc.step(toy_batch())
    changed = (model.q_proj.weight.detach() != before).reshape(-1)
    assert 0 < int(changed.sum()) <= 5 * 2  # at most s per chunk


def test_cesgc_update_lies_in_the_projected_subspace():
    model = Toy(n_in=6, n_out=8)
    before = model.q_proj.weight.detach().clone()
    cesgc = _method("cesgc", k=10, s=3, rank=2, lr=0.1)
    cesgc.prepare(model)
    cesgc.step(toy_batch())
    delta = model.q_proj.weight.detach() - before
    P = cesgc.blocks[0].projector  # right projection: n x r
    assert delta.abs().sum() > 0
    torch.testing.assert_close(delta - delta @ P @ P.T, torch.zeros_like(delta), atol=1e-6, rtol=0)


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="s: must be smaller than k"):
        _method("sgc", k=4, s=4)
    with pytest.raises(ConfigError, match="need s < k <= 48"):
        _method("sgc", k=64, s=3).prepare(Toy())
    with pytest.raises(ConfigError, match="k: must not exceed chunk_size"):
        _method("mesgc", k=16, s=3, chunk_size=8)


def _two_micro_batches():
    a, b = toy_batch(seed=3), toy_batch(seed=4)
    return Batch([a.micro_batches[0], b.micro_batches[0]])


@pytest.mark.parametrize("name", ["sgc", "mesgc", "cesgc"])
def test_fused_hooks_equal_the_unfused_update_with_gradient_accumulation(name):
    """Two micro-batches: the hooks must compress the accumulated gradient after the last one only."""
    extra = {"chunk_size": 24, "k": 12} if name == "mesgc" else {"rank": 2, "k": 10} if name == "cesgc" else {}
    results = []
    for fused in (True, False):
        model = Toy()
        method = _method(name, fused=fused, **extra)
        method.prepare(model)
        for _ in range(3):
            method.step(_two_micro_batches())
        results.append(model.q_proj.weight.detach().clone())
        assert model.q_proj.weight.grad is None
        assert method.state_elements()["gradients"] == 48  # accumulated over micro-batches: all held
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)


class _TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q_proj = torch.nn.Linear(6, 8, bias=False)
        self.v_proj = torch.nn.Linear(8, 10, bias=False)

    def forward(self, x):
        return self.v_proj(self.q_proj(x))


def _two_layer_loss(model, mb):
    return 0.5 * ((model(mb["x"])[:, :8] - mb["y"]) ** 2).sum(), 1


def _check_one_step_on_two_lengths(options: dict, device: str, rtol: float, atol: float) -> None:
    """q_proj (48 entries) and v_proj (80) share one A: after one step from zero moments, each weight moved
    as the paper's equations say with A's first d columns (bias-corrected moments: A g_s, A g_s^2)."""
    model = _TwoLayers().to(device)
    method = create("sgc", {"k": 12, "s": 2, "lr": 0.01, "target_modules": ["q_proj", "v_proj"], **options},
                    _two_layer_loss, seed=0)
    method.prepare(model)
    assert (method.operator.n_blocks > 1) == bool(options)
    A = method.projection(80).double().cpu().numpy()
    weights = {n: model.get_submodule(n).weight.detach().double().cpu().numpy().reshape(-1).copy()
               for n in ("q_proj", "v_proj")}
    batch = Batch([{k: v.to(device) for k, v in mb.items()} for mb in toy_batch(seed=3).micro_batches])
    model.zero_grad()
    _two_layer_loss(model, batch.micro_batches[0])[0].backward()
    grads = {n: model.get_submodule(n).weight.grad.double().cpu().numpy().reshape(-1).copy() for n in weights}
    model.zero_grad()
    method.step(batch)
    for name, w in weights.items():
        g, d = grads[name], w.size
        keep = np.argsort(-np.abs(g))[:2]
        g_s = np.zeros(d)
        g_s[keep] = g[keep]
        p_hat, q_hat = A[:, :d] @ g_s, A[:, :d] @ (g_s * g_s)
        m_hat = orthogonal_mp(A[:, :d], p_hat, n_nonzero_coefs=2)
        support = np.flatnonzero(m_hat)
        v_s = np.linalg.lstsq(A[:, support], q_hat, rcond=None)[0]
        update = np.zeros(d)
        update[support[v_s > 0]] = m_hat[support[v_s > 0]] / (np.sqrt(v_s[v_s > 0]) + 1e-8)
        now = model.get_submodule(name).weight.detach().double().cpu().numpy().reshape(-1)
        np.testing.assert_allclose(now, w - 0.01 * update, rtol=rtol, atol=atol)


@pytest.mark.parametrize("options", [{}, {"workspace_mb": 0.004}], ids=["one-block", "streamed"])
def test_weights_of_two_lengths_each_use_the_first_columns_of_one_a(options):
    """Whether solved per length (dense kernels) or in one streamed call with per-problem lengths."""
    _check_one_step_on_two_lengths(options, "cpu", rtol=1e-4, atol=1e-6)


def test_fused_holds_one_gradient_at_a_time():
    model = _TwoLayers()
    method = create("sgc", {"k": 20, "s": 3, "target_modules": ["q_proj", "v_proj"]}, _two_layer_loss, seed=0)
    method.prepare(model)
    held = []
    compress = method.compress

    def spy(block, grad):
        held.append(sum(p.grad is not None for p in model.parameters()))
        compress(block, grad)

    method.compress = spy
    method.step(toy_batch())
    assert held == [1, 1]  # each weight's gradient was freed before the next one was accumulated
    assert method.state_elements()["gradients"] == 80  # the largest adapted weight (v_proj, 10 x 8)
    unfused = create("sgc", {"k": 20, "s": 3, "target_modules": ["q_proj", "v_proj"], "fused": False},
                     _two_layer_loss, seed=0)
    unfused.prepare(_TwoLayers())
    assert unfused.state_elements()["gradients"] == 48 + 80


@pytest.mark.parametrize(
    ("name", "extra"),
    [("sgc", {}), ("sgc", {"workspace_mb": 0.01, "store_projection": True}), ("mesgc", {"chunk_size": 10, "k": 8}),
     ("cesgc", {"rank": 2, "k": 10, "store_projection": True})],
)
def test_predicted_state_bytes_from_a_meta_model_equal_the_real_ones(name, extra):
    with torch.device("meta"):
        meta_model = Toy()
    predicted = _method(name, **extra)
    predicted.prepare(meta_model)
    assert predicted.predicted_workspace_bytes() > 0
    method = _method(name, **extra)
    method.prepare(Toy())
    method.step(toy_batch())
    real = method.state_bytes()
    assert predicted.predicted_state_bytes() == real
    # The real tensors behind the figures.
    assert real["exp_avg"] == sum(b.exp_avg.numel() * 4 for b in method.blocks)
    if extra.get("store_projection"):
        ops = [method.operator]
        assert real["projection"] == sum(
            t.numel() * t.element_size() for op in ops for t in (op._base, op._perms, op._inverse) if t is not None)
    if name == "cesgc":
        assert real["projector"] == sum(b.projector.numel() * 4 for b in method.blocks)


def test_workspace_bound_on_a_llama_7b_mlp_weight():
    """A 4096 x 11008 weight on `meta`: SGC's transient memory is bounded by workspace_mb, not k x d."""
    with torch.device("meta"):
        model = Toy(n_in=4096, n_out=11008)
    for name, extra in (("sgc", {}), ("mesgc", {})):
        method = create(name, {"target_modules": ["q_proj"], **extra}, quadratic_loss, seed=0)
        method.prepare(model)
        assert method.predicted_workspace_bytes() <= 256 * 2**20
        assert method.predicted_state_bytes()["gradients"] == 4096 * 11008 * 4


def test_block_of_a_by_length_and_option():
    """B: the whole length up to 4096, then max(1024, d / 4096); an explicit `block_columns` wins; never
    more than the workspace holds or the length. The same on every device (the pre-flight runs on meta)."""
    method = create("sgc", {"target_modules": ["q_proj"]}, quadratic_loss, seed=0)
    assert method.max_block_columns == 131072  # 256 MiB / 4 / (4 bytes x k = 128)
    assert [method.columns_per_block(d) for d in (48, 4096, 16384, 4096 * 11008)] == [48, 4096, 1024, 11008]
    explicit = create("sgc", {"target_modules": ["q_proj"], "block_columns": 500, "workspace_mb": 0.1},
                      quadratic_loss, seed=0)
    assert explicit.columns_per_block(16384) == 51  # a quarter of 0.1 MiB over 512 bytes per column
    assert create("sgc", {"block_columns": 500}, quadratic_loss, seed=0).columns_per_block(16384) == 500


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("options", [{}, {"workspace_mb": 0.004}], ids=["one-block", "streamed"])
def test_a_step_on_a_gpu_matches_the_reference_equations(options):
    """On CUDA: A is one block (the paper's Gaussian A, the dense kernels, CuPy when installed; q_proj's A is a
    strided slice of it) or streamed."""
    _check_one_step_on_two_lengths(options, "cuda", rtol=1e-3, atol=1e-5)


def test_a_target_name_that_matches_nothing_is_an_error():
    """A typo in one of several names would otherwise adapt fewer weights than asked, with no word."""
    method = create("sgc", {"k": 12, "s": 2, "target_modules": ["q_proj", "v_projj"]}, _two_layer_loss, seed=0)
    with pytest.raises(ConfigError, match=r"\['v_projj'\] match no 2-D weight.*\['q_proj', 'v_proj'\]"):
        method.prepare(_TwoLayers())


@pytest.mark.parametrize(("length", "piece"), [(70_000, 10**9), (300_001, 10**9), (300_001, 65_536), (1_000, 64)])
def test_top_s_of_a_long_row_is_the_exact_top_s(length, piece):
    """The row-maximum search and the piecewise search find the same entries as a full sort."""
    from memft_bench.methods.sgc import top_s

    g = torch.randn(1, length, generator=torch.Generator().manual_seed(length))
    g[0, -3] = 50.0  # the largest entry in the tail that does not fill a row of the search
    values, index = top_s(g, 16, piece)
    expected = np.argsort(-np.abs(g[0].numpy()))[:16]
    assert set(index[0].tolist()) == set(expected.tolist())
    torch.testing.assert_close(values, g.gather(1, index))
