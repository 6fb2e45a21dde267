"""Masks, skew, LSTM cell, parameter counts, 8-bit baseline, dtypes, registry, config, objective and CLI."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import ALL, ARCHS, tiny

from pipeline.models import ARCHITECTURES, MultiScaleConfig, build_model, count_parameters, make_config
from pipeline.models.__main__ import main as cli_main
from pipeline.models.base import lstm_cell
from pipeline.models.diagonal_bilstm import DiagonalBiLSTMLayer
from pipeline.models.reference import diagonal_lengths, diagonal_order
from pipeline.models.masks import mask_a, mask_b
from pipeline.models.objective import BitsPerDim
from pipeline.models.row_lstm import RowLSTMLayer
from pipeline.models.skew import skew, unskew


def test_masks_centre_and_future():
    a, b = mask_a(3, 3, 3, 3), mask_b(3, 3, 3, 3)
    expected_a = torch.tensor([[0., 0, 0], [1, 0, 0], [1, 1, 0]])  # [out colour, in colour] at centre
    assert torch.equal(a[:, :, 1, 1], expected_a)
    assert torch.equal(b[:, :, 1, 1], expected_a + torch.eye(3))
    for m in (a, b):
        assert (m[:, :, 0] == 1).all() and (m[:, :, 1, 0] == 1).all()  # row above, left
        assert (m[:, :, 2] == 0).all() and (m[:, :, 1, 2] == 0).all()  # below, right


def test_skew_unskew():
    x = torch.arange(2 * 3 * 4, dtype=torch.float64).view(2, 3, 4) + 1
    s = skew(x)
    assert s.shape == (2, 3, 6)
    for r in range(3):
        assert torch.equal(s[:, r, r:r + 4], x[:, r])
        assert (s[:, r, :r] == 0).all() and (s[:, r, r + 4:] == 0).all()
    assert torch.equal(unskew(s), x)


def test_diagonal_order_walks_the_diagonals_and_is_cached():
    """Diagonal t of an n x n map holds pixels (r, t - r), top to bottom; the right-to-left order is the
    same walk on the mirrored map; *_inv undo them. Built once per (n, device)."""
    n = 5
    l2r, r2l, l2r_inv, r2l_inv = diagonal_order(n, torch.device("cpu"))
    walk = [(r, t - r) for t in range(2 * n - 1) for r in range(n) if 0 <= t - r < n]
    assert l2r.tolist() == [r * n + j for r, j in walk]
    assert r2l.tolist() == [r * n + (n - 1 - j) for r, j in walk]
    assert torch.equal(l2r[l2r_inv], torch.arange(n * n)) and torch.equal(r2l[r2l_inv], torch.arange(n * n))
    assert diagonal_lengths(n) == [sum(1 for r, j in walk if r + j == t) for t in range(2 * n - 1)]
    assert diagonal_order(n, torch.device("cpu"))[0] is l2r


def test_cell_input_uses_tanh():
    """o, i saturated open, f closed, g pre-activation -1: c must be tanh(-1), not sigmoid(-1)."""
    h = 5
    gates = torch.cat([torch.full((1, h), 40.0), torch.full((1, h), -40.0),
                       torch.full((1, h), 40.0), torch.full((1, h), -1.0)], 1).double()
    hh, c = lstm_cell(gates, torch.full((1, h), 3.0, dtype=torch.float64))
    torch.testing.assert_close(c, torch.full_like(c, math.tanh(-1.0)))
    torch.testing.assert_close(hh, torch.full_like(c, math.tanh(math.tanh(-1.0))))


@pytest.mark.parametrize("layer_cls", [RowLSTMLayer, DiagonalBiLSTMLayer])
def test_recurrent_layers_use_the_cell(layer_cls):
    """Same check through a whole layer: constant gates -> every hidden state is tanh(tanh(-1))."""
    h = 6
    layer = layer_cls(h).double()
    with torch.no_grad():
        layer.input_to_state.weight.zero_()
        layer.state_to_state.zero_()
        blocks = layer.input_to_state.bias.view(-1, 4, h)
        blocks.copy_(torch.tensor([40.0, -40.0, 40.0, -1.0], dtype=torch.float64)[None, :, None])
    v = torch.randn(1, 2 * h, 4, 4, dtype=torch.float64)
    hval = torch.full((1, h, 4, 4), math.tanh(math.tanh(-1.0)), dtype=torch.float64)
    if layer_cls is DiagonalBiLSTMLayer:  # both directions, right-to-left shifted down a row;
        hval[:, :, 1:] *= 2                 # its 1x1 convs are channels-last MaskedLinear
        expected = v + layer.state_to_output(hval.movedim(1, -1)).movedim(-1, 1)
    else:
        expected = v + layer.state_to_output(hval)
    torch.testing.assert_close(layer(v), expected)


@pytest.mark.parametrize("name", ALL)
def test_equal_logits_give_8_bits(name):
    m = tiny(name)
    heads = [m.output] if hasattr(m, "output") else [m.small.output, m.large.output]
    with torch.no_grad():
        for head in heads:
            head[3].weight.zero_()
            head[3].bias.zero_()
    x = torch.randint(0, 256, (3, 3, 6, 6), dtype=torch.uint8)
    bpd = m.bits_per_dim(x)
    # multiscale: small (3*3*3 sub-pixels) + large (3*6*6) code lengths, per large sub-pixel
    expected = 8.0 * (1 + 0.25) if name == "multiscale" else 8.0
    assert (bpd - expected).abs().max() < 1e-12
    assert (m.float().bits_per_dim(x) - expected).abs().max() < 1e-5


def test_parameter_counts_by_hand():
    # Common: input 7x7 conv 3 -> 2h=8: 3*8*49 + 8 = 1184; head 8 -> 8 (1x1): 64 + 8 = 72;
    # 8 -> 768 logits: 8*768 + 768 = 6912; learnable skip connections, one 1x1 2h -> 2h per layer:
    # 64 + 8 = 72. Total common (1 layer) = 8240.
    common = 1184 + 72 + 6912 + 72
    kw = dict(image_size=6, layers=1, hidden=4, out_maps=8)
    # PixelCNN block: 1x1 8->4 (32+4) + 3x3 4->4 (144+4) + 1x1 4->8 (32+8) = 224
    assert count_parameters(build_model("pixelcnn", **kw)) == common + 224 == 8464
    # Row LSTM: i-s 1x3 8->16 (384+16) + s-s 3-wide 4->16 (192) + h0, c0 (8) + 1x1 4->8 (40) = 640
    assert count_parameters(build_model("row_lstm", **kw)) == common + 640 == 8880
    # Diagonal BiLSTM: i-s 1x1 8->32 (256+32) + s-s 2 dirs x 2x1 4->16 (256) + h0, c0 2x4 each (16)
    # + 1x1 4->8 (40) = 600
    assert count_parameters(build_model("diagonal_bilstm", **kw)) == common + 600 == 8840


@pytest.mark.parametrize("name", ALL)
def test_config_rebuilds_same_architecture(name):
    m = build_model(name, image_size=8, layers=2, hidden=6, out_maps=16, skip=False)
    assert m.config["name"] == name
    m2 = build_model(**m.config)
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    assert shapes == {k: v.shape for k, v in m2.state_dict().items()}
    assert m2.config == m.config
    if name == "multiscale":
        assert m.config["small_size"] == 4 and m.config["base"] == "diagonal_bilstm"


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_and_bf16_params(name):
    torch.manual_seed(0)
    m = build_model(name, **{"image_size": 4, "layers": 2, "hidden": 6, "out_maps": 16})
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bpd = m.bits_per_dim(x)
    assert bpd.dtype == torch.float32 and torch.isfinite(bpd).all()
    bpd.mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    m = m.to(torch.bfloat16)
    logits = m(x.long())
    assert logits.shape == (2, 256, 3, 4, 4)
    bpd = m.bits_per_dim(x)
    assert bpd.dtype == torch.float32 and torch.isfinite(bpd).all()
    bpd.mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in m.parameters())


def test_fp16_autocast_forward():
    m = tiny("row_lstm").float()
    with torch.autocast("cpu", dtype=torch.float16):
        bpd = m.bits_per_dim(torch.randint(0, 256, (1, 3, 6, 6)))
    assert torch.isfinite(bpd).all()


def test_registry_names_each_config_and_model_once():
    """One table: every entry's config and model carry its name; the multi-scale bases are the entries
    flagged as such, and the multi-scale config refuses any other."""
    assert list(ARCHITECTURES) == ["pixelcnn", "row_lstm", "diagonal_bilstm", "multiscale"]
    for name, arch in ARCHITECTURES.items():
        assert arch.config().name == name and arch.model_class().name == name
    assert [n for n, a in ARCHITECTURES.items() if a.multiscale_base] == ARCHS
    with pytest.raises(ValueError, match=r"'model.base' is 'multiscale'; expected one of \['diagonal_bilstm', "
                                         r"'pixelcnn', 'row_lstm'\]"):
        MultiScaleConfig(base="multiscale").check()
    with pytest.raises(ValueError, match="unknown model 'rowlstm'; choose from"):
        make_config("rowlstm")
    for base in ARCHS:
        m = build_model("multiscale", image_size=4, layers=1, hidden=4, out_maps=8, base=base)
        assert type(m.small) is type(m.large) is ARCHITECTURES[base].model_class()


def test_objective_state_dict_is_the_models_under_its_prefix():
    """DeepSpeed checkpoints hold the objective's state dict; `model_state_dict` gives back the model's."""
    m = tiny("row_lstm")
    objective, model_sd = BitsPerDim(m), m.state_dict()
    state = objective.state_dict()
    assert list(state) == [BitsPerDim.PREFIX + k for k in model_sd]
    unwrapped = BitsPerDim.model_state_dict(state)
    assert list(unwrapped) == list(model_sd) and all(torch.equal(unwrapped[k], model_sd[k]) for k in model_sd)
    build_model(**m.config).load_state_dict(unwrapped)  # strict: exactly the model's keys


def test_cli(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  name: pixelcnn\n  image_size: 6\n  layers: 1\n  hidden: 4\n  out_maps: 8\n")
    cli_main(["--summary", str(cfg)])
    assert "8,464 parameters" in capsys.readouterr().out
    cli_main(["--summary", "row_lstm"])
    assert "row_lstm: 9,358,336 parameters" in capsys.readouterr().out


@pytest.mark.parametrize("name", ALL)
def test_every_module_with_parameters_is_called(name):
    """DeepSpeed ZeRO-3 gathers a module's own parameters in its __call__ hooks: a training
    step must call every module that owns parameters (no reaching into a child's weight)."""
    m = tiny(name, cond_maps=4) if name == "multiscale" else tiny(name)
    owners = {mod for mod in m.modules() if any(True for _ in mod.parameters(recurse=False))}
    called = set()
    for mod in owners:
        mod.register_forward_pre_hook(lambda mod, args: called.add(mod))
    m.bits_per_dim(torch.randint(0, 256, (1, 3, 6, 6)))
    assert called == owners


def test_bench_flop_counts_match_torch_counter():
    """The analytic FLOP counts of bench/bench_model_step.py equal torch's FlopCounterMode."""
    import importlib.util
    from pathlib import Path

    from torch.utils.flop_counter import FlopCounterMode
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_model_step.py"
    spec = importlib.util.spec_from_file_location("bench_model_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name, count in bench.FLOPS.items():
        m = build_model(name, image_size=6, layers=2, hidden=8, out_maps=32)
        with FlopCounterMode(display=False) as counter:
            m(torch.randint(0, 256, (1, 3, 6, 6)))
        assert counter.get_total_flops() == count(6, 2, 8, out_maps=32), name


@pytest.mark.parametrize("name", ARCHS)
def test_skip_connections_learnable_and_start_as_plain_sum(name):
    """Section 3.4's learnable skip connections: initialised to the fixed sum (weight 1), trained by
    the loss (non-zero gradient), masked entries exactly zero in use."""
    torch.manual_seed(0)
    m = build_model(name, image_size=5, layers=3, hidden=6, out_maps=16).double()
    sk = m.skip_connections
    assert sk.weight.shape == (12, 36) and sk.weight.requires_grad and sk.bias.requires_grad
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    outs, v = [], m.input_conv(x.double() * (2 / 255) - 1)
    for layer in m.layers:
        v = layer(v)
        outs.append(v)
    torch.testing.assert_close(sk(outs), sum(outs), rtol=0, atol=1e-12)  # [I, I, I] at init
    m.bits_per_dim(x).mean().backward()
    assert sk.weight.grad.abs().sum() > 0 and sk.bias.grad.abs().sum() > 0
    masked = sk.mask == 0
    assert masked.any() and (sk.masked_weight()[masked] == 0).all()
    # a blue input map never reaches a red output map of the sum
    assert (sk.mask[:4, 8:12] == 0).all() and (sk.mask[8:, :4] == 1).all()
