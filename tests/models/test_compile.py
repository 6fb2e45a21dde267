"""`train.compile=cell`: the fused LSTM cell (torch.compile) computes what the eager cell does; and
every model's objective is one graph without host round-trips (what a CUDA graph capture needs)."""

import pytest
import torch
import torch._dynamo

from pipeline.models import build_model, compile_cells
from pipeline.models.base import lstm_cell


def _loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    loss = model.bits_per_dim(x).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_cells_match_eager_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8)
    for name in ("diagonal_bilstm", "row_lstm"):
        model = build_model(name, image_size=5, layers=2, hidden=4, out_maps=8).double()
        ref_loss, ref_grads = _loss_and_grads(model, x)
        assert compile_cells(model) == 2
        assert all(layer.cell is not lstm_cell for layer in model.layers)
        loss, grads = _loss_and_grads(model, x)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
        for n, g in grads.items():
            torch.testing.assert_close(g, ref_grads[n], rtol=1e-9, atol=1e-12, msg=n)


def test_pixelcnn_has_no_cell_to_compile():
    assert compile_cells(build_model("pixelcnn", image_size=5, layers=2, hidden=4, out_maps=8)) == 0


@pytest.mark.parametrize("name", ["pixelcnn", "row_lstm", "diagonal_bilstm", "multiscale"])
def test_objective_traces_as_one_graph(name):
    """No data-dependent shape, no .item(), no host round-trip in bits_per_dim: TorchDynamo sees one
    graph with no break. Such an op would stall a GPU once per layer and make CUDA graph capture
    (bench/gpu_check.py's cuda_graph section) or whole-model compilation impossible."""
    torch.manual_seed(0)
    model = build_model(name, image_size=6, layers=2, hidden=4, out_maps=8)
    x = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda images: model.bits_per_dim(images).sum())(x)
    assert explained.graph_break_count == 0, [str(b.reason)[:300] for b in explained.break_reasons]
    assert explained.graph_count == 1
