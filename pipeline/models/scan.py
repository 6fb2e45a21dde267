"""A whole LSTM scan of a recurrent layer with static shapes: a few large operations per step (issue 21).

Both recurrent layers of the paper are scans whose step t computes, for all m positions of a line at once
(the m rows of one skewed column of the Diagonal BiLSTM, Section 3.2, or the m columns of one image row
of the Row LSTM, Section 3.1), gates = G_t + K_ss * h_{t-1}: the input-to-state part G_t, precomputed for
every step, plus a k-tap state-to-state convolution along the line (k = 2: the left pixel and the one
above; k = 3: the row above, columns j-1..j+1), then the LSTM cell (paper eq. 3).

`LSTMScan` runs all steps of all directions as one autograd node, so that a step costs a fixed handful
of operations whatever the line length or batch, forward and backward:

* the states are written into an im2col buffer X (one row per position, k slots of h): the cell's last
  product writes h_t[r] straight into all k slots that read it (an overlapping-free strided view), so
  the state-to-state convolution of the next step is ONE batched matmul of X_t with the kernel
  ([direction, k*h, 4h]), added to G_t by the same call (baddbmm);
* the cell is sigmoid, tanh, c = f*c' + i*g (mul, addcmul), tanh, h = o*tanh(c): 7 calls per step;
* the backward is linear in (dL/dh, dL/dc) with coefficients that depend on the saved activations only,
  so they are computed for all steps at once before the loop; a step is then one baddbmm (dL/dX), one
  sum over the slots (dL/dh) and one mul + addcmul (dL/dgates and the carried dL/dc): 4 calls. The
  kernel's gradient is one contraction over all steps after the loop.

Every step has the same shapes, and nothing is read back to the host, so torch.compile(fullgraph=True)
and CUDA-graph capture can take the whole layer. Cells a step must not change (the Diagonal BiLSTM's
skewed map outside the image at a fixed height) are frozen by their gate pre-activations: o = i = -inf,
f = +inf give sigmoid 0 / 1 exactly, so c stays c exactly, h = 0 exactly, and every gradient through them
is exactly 0 (`FREEZE`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def freeze_gates(hidden: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Gate pre-activations [o, f, i, g] (4h) that keep a cell's state exactly: o = i = -inf, f = +inf, g = 0."""
    inf = float("inf")
    return torch.tensor([-inf, inf, -inf, 0.0], dtype=dtype, device=device).repeat_interleave(hidden)


def _slots(x: torch.Tensor, k: int) -> torch.Tensor:
    """The write view of im2col buffers x [..., D, rows, B, k*h]: [..., D, m, k, B, h], element (r, s) at
    row r + s, slot s, where m = rows - k + 1. Writing h[r] into it fills every slot that reads h[r]."""
    *lead, d, rows, b, kh = x.shape
    h = kh // k
    row = b * kh
    lead_strides = list(x.stride()[:-4])
    return x.as_strided((*lead, d, rows - k + 1, k, b, h),
                        (*lead_strides, rows * row, row, row + h, kh, 1))


class LSTMScan(torch.autograd.Function):
    """h for every step of an LSTM scan with a k-tap state-to-state convolution along its lines.

    g [T, D, m, B, 4h]: input-to-state pre-activations of step t, direction d, position r ([o, f, i, g]);
    c_init [D, m, B, h]: the cell state before step 0; h_init [D, m, B, h] or None (zeros): the hidden
    state before step 0; w [D, k*h, 4h]: slot s of position r reads h_{t-1}[r + offset - s] (zero
    outside 0..m-1). Returns h [T, D, m, B, h].
    """

    @staticmethod
    def forward(ctx, g: torch.Tensor, c_init: torch.Tensor, h_init: Optional[torch.Tensor], w: torch.Tensor,
                k: int, offset: int) -> torch.Tensor:
        t_steps, d, m, b, h4 = g.shape
        h = h4 // 4
        g = g.contiguous()
        # im2col buffers of every step (X_0: the initial state); the rows outside offset..offset+m-1
        # receive writes nobody reads, the slots no position writes stay zero (the convolution's padding).
        x = g.new_zeros(t_steps + 1, d, m + k - 1, b, k * h)
        writes = _slots(x, k)  # [T+1, D, m, k, B, h]
        if h_init is not None:
            writes[0].copy_(h_init.unsqueeze(2))
        reads = x[:, :, offset:offset + m].flatten(2, 3)  # [T+1, D, m*B, k*h]
        acts = g.new_empty(t_steps, d, m, 1, b, h4)  # sigmoid(o, f, i), tanh(g)
        c = g.new_empty(t_steps + 1, d, m, 1, b, h)
        c[0].copy_(c_init.unsqueeze(2))
        tanh_c = g.new_empty(t_steps, d, m, 1, b, h)
        z = g.new_empty(d, m * b, h4)  # one step's gate pre-activations, reused
        z_sig, z_tanh = z.view(d, m, 1, b, h4).split([3 * h, h], -1)
        a_sig, a_tanh = acts.split([3 * h, h], -1)
        o, f, i, gg = (a.unbind(0) for a in acts.split(h, -1))
        g_steps, x_reads, x_writes = g.view(t_steps, d, m * b, h4).unbind(0), reads.unbind(0), writes.unbind(0)
        a_sig, a_tanh, c_steps, tc_steps = a_sig.unbind(0), a_tanh.unbind(0), c.unbind(0), tanh_c.unbind(0)
        tc_slots = tanh_c.expand(t_steps, d, m, k, b, h).unbind(0)  # out= does not broadcast: one operand does
        for t in range(t_steps):
            torch.baddbmm(g_steps[t], x_reads[t], w, out=z)
            torch.sigmoid(z_sig, out=a_sig[t])
            torch.tanh(z_tanh, out=a_tanh[t])
            torch.mul(f[t], c_steps[t], out=c_steps[t + 1])
            c_steps[t + 1].addcmul_(i[t], gg[t])
            torch.tanh(c_steps[t + 1], out=tc_steps[t])
            torch.mul(o[t], tc_slots[t], out=x_writes[t + 1])  # h_t into every slot that reads it
        ctx.save_for_backward(w)
        ctx.buffers = (x, acts, c, tanh_c)
        ctx.k, ctx.offset, ctx.has_h_init = k, offset, h_init is not None
        return writes[1:, :, :, 0]  # h_t[r] at slot 0: [T, D, m, B, h]

    @staticmethod
    def backward(ctx, dh_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        (w,) = ctx.saved_tensors
        x, acts, c, tanh_c = ctx.buffers
        k, offset = ctx.k, ctx.offset
        t_steps, d, m, _, b, h4 = acts.shape
        h = h4 // 4
        acts, c, tanh_c = acts.squeeze(3), c.squeeze(3), tanh_c.squeeze(3)
        o, f, i, gg = acts.split(h, -1)
        # dL/dgates and the carried dL/dc of a step are linear in (dL/dh, dL/dc of the step after):
        #   dc = carry + dh * o (1 - tanh(c)^2);   d[o, f, i, g] = [dh tanh(c) o', dc c' f', dc g i', dc i g'];
        #   carry' = dc f.   Slots [o, f, i, g, carry']: out = dh * coef_dh + carry * coef_carry.
        sig_d = acts[..., :3 * h] * (1 - acts[..., :3 * h])
        coef_carry = torch.stack([torch.zeros_like(f), c[:-1] * sig_d[..., h:2 * h], gg * sig_d[..., 2 * h:],
                                  i * (1 - gg * gg), f], -2)  # [T, D, m, B, 5, h]
        coef_dh = coef_carry * (o * (1 - tanh_c * tanh_c)).unsqueeze(-2)
        coef_dh[..., 0, :] = tanh_c * sig_d[..., :h]
        # dL/dh_t enters through position r's own slot `offset` of the buffer it is written to (read rows).
        dh_x = dh_out.new_zeros(t_steps, d, m, b, k, h)
        dh_x[..., offset, :] = dh_out
        dh_x = dh_x.view(t_steps, d, m * b, k * h)
        q = dh_out.new_zeros(t_steps + 1, d, m, b, 5, h)  # step t: [dL/dgates_t, dL/dc_{t-1}]
        dgates = q[..., :4, :].flatten(-2).flatten(2, 3)  # [T+1, D, m*B, 4h]
        carry = q[..., 4:, :]
        dx = dh_out.new_zeros(d, m + k - 1, b, k * h)  # dL/dX of one step (rows outside the reads stay 0)
        dx_reads = dx[:, offset:offset + m].flatten(1, 2)
        dh = dh_out.new_empty(d, m, b, 1, h)
        dh_flat = dh.squeeze(3)
        dh_sum = _slots(dx, k)  # dL/dh[r] = sum over the slots s of row r + s
        wt = w.transpose(1, 2)
        q_steps, dg_steps, carry_steps = q.unbind(0), dgates.unbind(0), carry.unbind(0)
        cd_steps, cc_steps, dhx_steps = coef_dh.unbind(0), coef_carry.unbind(0), dh_x.unbind(0)
        for t in range(t_steps - 1, -1, -1):
            torch.baddbmm(dhx_steps[t], dg_steps[t + 1], wt, out=dx_reads)
            torch.sum(dh_sum, 2, out=dh_flat)
            torch.mul(dh, cd_steps[t], out=q_steps[t])
            q_steps[t].addcmul_(carry_steps[t + 1], cc_steps[t])
        dg = dgates[:t_steps].view(t_steps, d, m, b, h4)
        dw = torch.einsum("tdrk,tdrj->dkj", x[:t_steps, :, offset:offset + m].flatten(2, 3), dgates[:t_steps])
        dc_init = q[0, ..., 4, :]
        dh_init = None
        if ctx.has_h_init and ctx.needs_input_grad[2]:
            torch.bmm(dgates[0], wt, out=dx_reads)
            dh_init = _slots(dx, k).sum(2)
        return dg, dc_init, dh_init, dw, None, None


def scan_functional(g: torch.Tensor, c_init: torch.Tensor, h_init: Optional[torch.Tensor], w: torch.Tensor,
                    k: int, offset: int) -> torch.Tensor:
    """The same scan from out-of-place autograd ops (the path torch.compile traces; see `lstm_scan`).

    Same arguments and result as `LSTMScan`; the im2col rows of a step are k shifted slices of the
    zero-padded previous h, so its backward is autograd's.
    """
    t_steps, d, m, b, h4 = g.shape
    h = h4 // 4
    pad = g.new_zeros(d, k - 1, b, h)
    hp = pad.new_zeros(d, m, b, h) if h_init is None else h_init
    c = c_init
    outs = []
    for g_t in g.unbind(0):
        rows = torch.cat([pad, hp, pad], 1)  # h[r] at row r + k - 1
        # slot s of position r reads h[r + offset - s]
        x = torch.cat([rows[:, offset - s + k - 1: offset - s + k - 1 + m] for s in range(k)], -1)
        z = torch.baddbmm(g_t.reshape(d, m * b, h4), x.reshape(d, m * b, k * h), w).view(d, m, b, h4)
        o, f, i = torch.sigmoid(z[..., :3 * h]).split(h, -1)
        c = torch.addcmul(f * c, i, torch.tanh(z[..., 3 * h:]))
        hp = o * torch.tanh(c)
        outs.append(hp)
    return torch.stack(outs)


def lstm_scan(g: torch.Tensor, c_init: torch.Tensor, h_init: Optional[torch.Tensor], w: torch.Tensor,
              k: int, offset: int) -> torch.Tensor:
    """The scan (see `LSTMScan`) in the dtype of g (under autocast: the input-to-state output's).

    Eager: `LSTMScan`, a few calls per step into preallocated buffers. Under torch.compile (whose graphs
    cannot write into strided `out=` views): `scan_functional`, the same arithmetic, which the compiler
    fuses itself; both are checked against each other and against the reference path in the tests.
    """
    dtype = g.dtype
    h_init = None if h_init is None else h_init.to(dtype)
    c_init, w = c_init.to(dtype), w.to(dtype)
    if torch.compiler.is_compiling():
        return scan_functional(g, c_init, h_init, w, k, offset)
    with torch.autocast(g.device.type, enabled=False):
        return LSTMScan.apply(g, c_init, h_init, w, k, offset)
