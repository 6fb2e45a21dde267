"""`train.compile=cell`: the fused LSTM cell (torch.compile) computes what the eager cell does."""

import torch

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
