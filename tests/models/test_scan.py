"""The fixed-height scan (pipeline/models/scan.py), the recurrent layers' default forward, against the
reference path (the code before issue 21, pipeline/models/reference.py): equal to 1e-12 in float64 and to
1e-6 in float32, gradients too; its out-of-place twin (what torch.compile traces) against it; frozen
cells exactly frozen; and a whole layer compiled with fullgraph=True against eager."""
from __future__ import annotations

import pytest
import torch
from helpers import changed_matrix, tiny

from pipeline.models import build_model, compile_layers
from pipeline.models.diagonal_bilstm import DiagonalBiLSTMLayer
from pipeline.models.reference import use_reference
from pipeline.models.row_lstm import RowLSTMLayer
from pipeline.models.scan import LSTMScan, freeze_gates, scan_functional

# (layer, its arguments, input height, width): the Diagonal BiLSTM's maps are square.
LAYERS = [
    (DiagonalBiLSTMLayer, {}, 1, 1), (DiagonalBiLSTMLayer, {}, 2, 2), (DiagonalBiLSTMLayer, {}, 5, 5),
    (DiagonalBiLSTMLayer, {"residual": False, "cond_maps": 3}, 4, 4),
    (RowLSTMLayer, {}, 1, 1), (RowLSTMLayer, {}, 4, 5), (RowLSTMLayer, {"kernel": 5}, 3, 6),
    (RowLSTMLayer, {"kernel": 1, "residual": False, "cond_maps": 3}, 3, 4),
]


def _layer(cls, kw, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layer = cls(4, **kw).double()
    with torch.no_grad():  # the learned initial states start at 0, which would hide a misplaced one
        layer.h0.normal_()
        layer.c0.normal_()
    return layer


def _outputs_and_grads(layer, impl: str, v, cond):
    use_reference(layer, impl)
    out = layer(v, cond)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    inputs = [v, *([cond] if cond is not None else []), *layer.parameters()]
    return out, torch.autograd.grad((out * weights).sum(), inputs)


@pytest.mark.parametrize("cls,kw,n,w", LAYERS)
def test_layer_scan_equals_reference_float64(cls, kw, n, w):
    layer = _layer(cls, kw)
    v = torch.randn(3, 8, n, w, dtype=torch.float64, requires_grad=True)
    cond = torch.randn(3, 3, n, w, dtype=torch.float64, requires_grad=True) if kw.get("cond_maps") else None
    out, grads = _outputs_and_grads(layer, "scan", v, cond)
    ref, ref_grads = _outputs_and_grads(layer, "reference", v, cond)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["row_lstm", "diagonal_bilstm", "multiscale"])
def test_model_scan_equals_reference_float32(name):
    """The whole model in float32 (the training default): loss and every gradient within 1e-6."""
    torch.manual_seed(0)
    m = build_model(name, image_size=6, layers=2, hidden=8, out_maps=32)
    x = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    results = {}
    for impl in ("scan", "reference"):
        assert use_reference(m, impl) == (4 if name == "multiscale" else 2)
        m.zero_grad(set_to_none=True)
        loss = m.bits_per_dim(x).mean()
        loss.backward()
        results[impl] = loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}
    (loss, grads), (ref_loss, ref_grads) = results["scan"], results["reference"]
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    for k, g in grads.items():
        torch.testing.assert_close(g, ref_grads[k], rtol=0, atol=1e-6, msg=k)
    if name != "multiscale":
        logits = m(x)
        use_reference(m)
        torch.testing.assert_close(logits, m(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["row_lstm", "diagonal_bilstm"])
def test_scan_path_causal_and_its_sampler_logprob_exact(name, image):
    """The scan path (forced; CPU's default is the reference) keeps causality bit for bit, sees the
    whole past (the Diagonal BiLSTM), and the incremental pass's log-probabilities equal its forward's."""
    m = tiny(name)
    assert use_reference(m, "scan") == 2
    changed = changed_matrix(m, image)
    assert not changed.tril().any(), "a logit depends on its own or a later sub-pixel"
    if name == "diagonal_bilstm":  # the last sub-pixel sees every earlier one
        assert changed[:-1, -1].all()
    x, lp = m.sample(2, generator=torch.Generator().manual_seed(7), return_logprob=True)
    torch.testing.assert_close(m.bits_per_dim(x), lp, rtol=0, atol=1e-10)


def test_auto_runs_the_reference_on_cpu_eager():
    layer = _layer(RowLSTMLayer, {})
    assert layer.impl == "auto"
    v = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    calls = []
    real = LSTMScan.apply
    try:
        LSTMScan.apply = lambda *a: calls.append(1) or real(*a)
        layer(v)
        assert calls == []
        use_reference(layer, "scan")
        layer(v)
        assert calls == [1]
    finally:
        LSTMScan.apply = real


def test_use_reference_refuses_an_unknown_implementation():
    with pytest.raises(ValueError, match="unknown recurrent-layer implementation 'fast'"):
        use_reference(build_model("row_lstm", image_size=4, layers=1, hidden=4, out_maps=8), "fast")


def _scan_inputs(k: int, seed: int = 0):
    """Random scan inputs (3 steps, 2 directions, 4 positions, batch 2, h = 3), two cells frozen."""
    g = torch.Generator().manual_seed(seed)
    t, d, m, b, h = 3, 2, 4, 2, 3
    gates = torch.randn(t, d, m, b, 4 * h, generator=g, dtype=torch.float64)
    gates[0, 1, 3] = freeze_gates(h, torch.float64, gates.device)
    gates[2, 0, 0] = freeze_gates(h, torch.float64, gates.device)
    c_init = torch.randn(d, m, b, h, generator=g, dtype=torch.float64)
    h_init = torch.randn(d, m, b, h, generator=g, dtype=torch.float64)
    w = torch.randn(d, k * h, 4 * h, generator=g, dtype=torch.float64)
    return [x.requires_grad_() for x in (gates, c_init, h_init, w)]


@pytest.mark.parametrize("k,offset", [(2, 0), (3, 1), (1, 0)])
def test_out_of_place_scan_equals_the_buffered_one(k, offset):
    """`scan_functional` (traced by torch.compile) and `LSTMScan` (eager) compute the same scan."""
    inputs = _scan_inputs(k)
    weights = torch.randn(3, 2, 4, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = LSTMScan.apply(*inputs, k, offset)
    ga = torch.autograd.grad((a * weights).sum(), inputs)
    b = scan_functional(*inputs, k, offset)
    gb = torch.autograd.grad((b * weights).sum(), inputs)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_frozen_cells_keep_their_state_exactly():
    """o = i = -inf, f = +inf: h = 0 and c = c_init exactly, and no gradient reaches the gates or the kernel."""
    gates, c_init, _, w = _scan_inputs(2)
    frozen = freeze_gates(3, torch.float64, gates.device).expand_as(gates).clone().requires_grad_()
    out = LSTMScan.apply(frozen, c_init, None, w, 2, 0)
    assert torch.equal(out, torch.zeros_like(out))
    dg, dc, dw = torch.autograd.grad(out.sum(), [frozen, c_init, w])
    assert torch.equal(dg, torch.zeros_like(dg)) and torch.equal(dw, torch.zeros_like(dw))
    assert torch.equal(dc, torch.zeros_like(dc))


@pytest.mark.parametrize("cls,kw,n", [(DiagonalBiLSTMLayer, {}, 4), (RowLSTMLayer, {}, 4)])
def test_whole_layer_compiles_as_one_graph_and_matches_eager(cls, kw, n):
    """`train.compile=layer`: torch.compile(fullgraph=True) of a whole recurrent layer (no graph break,
    static shapes), forward and backward within float64 rounding of the eager layer."""
    layer = _layer(cls, kw)
    v = torch.randn(2, 8, n, n, dtype=torch.float64, requires_grad=True)
    ref, ref_grads = _outputs_and_grads(layer, "scan", v, None)
    torch._dynamo.reset()
    assert compile_layers(layer) == 1
    out, grads = _outputs_and_grads(layer, "scan", v, None)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_bench_flop_count_of_the_scan_matches_torch_counter():
    """bench/bench_model_step.py's FLOPs of the Diagonal BiLSTM's scan (frozen cells included) equal
    torch's FlopCounterMode on the scan path."""
    import importlib.util
    from pathlib import Path

    from torch.utils.flop_counter import FlopCounterMode
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_model_step.py"
    spec = importlib.util.spec_from_file_location("bench_model_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for n in (1, 6):
        m = build_model("diagonal_bilstm", image_size=n, layers=2, hidden=8, out_maps=32)
        use_reference(m, "scan")
        with FlopCounterMode(display=False) as counter:
            m(torch.randint(0, 256, (1, 3, n, n)))
        assert counter.get_total_flops() == bench.flops_diagonal_bilstm(n, 2, 8, out_maps=32, scan=True)
