r"""The per-step recurrences of the fused backend, written with torch operations.

These are the time loops that :mod:`lstmkit.ops.fused` runs between its large GEMMs; the
C++ extension in ``csrc/`` implements the same functions with the same signatures, so
either can be plugged in. Everything here is plain torch, so it runs on any device and
dtype; Python runs once per time step.

Conventions shared with the C++ kernels (see ``ops/reference.py`` for the flat layout):

* sequences are flat: row block t of an (N, ·) buffer holds step t for the first
  ``batch_sizes[t]`` sequences (non-increasing batch sizes, i.e. sorted by length);
* one *carry* buffer of shape (B, ·) holds each sequence's running state. At step t only
  its first ``batch_sizes[t]`` rows are read and written. Going forward in time, rows of
  sequences that ended keep their final state; going backward (``reverse``), rows of
  sequences not started yet still hold their initial state. So the carry starts as the
  initial state and ends as the final state, in both directions, with no special cases.
  The backward loops carry dh (and dc) the same way: they start as the gradient of the
  final state and end as the gradient of the initial state;
* ``xw`` (N, G·H) enters the forward loops holding the input projection of every step and
  leaves holding the gate activations (the loops write them in place), which is what
  BPTT saves. No per-step buffers are allocated beyond that;
* optional masks (``ops/masks.py``): ``h_drop`` (B, R) multiplies h_{t-1} where it feeds
  W_hh (recurrent dropout, one row per sequence); ``zone_h`` (N, R) and ``zone_c`` (N, H)
  mix the previous state back in (zoneout): h_t = d ⊙ h_{t-1} + (1 − d) ⊙ h̃_t. The saved
  ``c`` and ``out`` then hold the zoned-out states; BPTT recomputes the candidate
  c̃_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t from the gates. Through a mix, with dh = ∂L/∂h_t:
  ∂L/∂h̃_t = (1 − d) ⊙ dh and a direct term d ⊙ dh goes to ∂L/∂h_{t-1} (c alike); through
  the dropped input, ∂L/∂h_{t-1} gets (dA W_hh) ⊙ m.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells.lstm import Greff, gate_rows


def step_rows(batch_sizes: list[int], reverse: bool) -> list[tuple[int, int]]:
    """(first row, number of active rows) of every step in processing order."""
    starts, offset = [], 0
    for n in batch_sizes:
        starts.append((offset, n))
        offset += n
    return starts[::-1] if reverse else starts


# -- LSTM -------------------------------------------------------------------------------
def lstm_forward(xw: Tensor, w_hh: Tensor, w_hr: Tensor | None, peep: Tensor | None,
                 h0: Tensor, c0: Tensor, batch_sizes: list[int], reverse: bool,
                 coupled: bool, h_drop: Tensor | None = None, zone_h: Tensor | None = None,
                 zone_c: Tensor | None = None):
    """Returns (out (N, R), c (N, H), m (N, H) or None, h_n (B, R), c_n (B, H)); ``xw``
    becomes the activations i, f, g, o (coupled: i, g, o). ``m = o ⊙ tanh(c)`` is kept
    only with projections, for the gradient of ``w_hr``."""
    N, H = xw.shape[0], c0.shape[1]
    out = xw.new_empty(N, h0.shape[1])
    c = xw.new_empty(N, H)
    m = xw.new_empty(N, H) if w_hr is not None else None
    h_carry, c_carry = h0.clone(), c0.clone()
    w_hh_t = w_hh.t()
    if peep is not None:
        p_i, p_f, p_o = (peep[:H], None, peep[H:]) if coupled else peep.split(H)
    for start, n in step_rows(batch_sizes, reverse):
        rows = slice(start, start + n)
        h_in = h_carry[:n] if h_drop is None else h_carry[:n] * h_drop[:n]
        a = xw[rows].addmm_(h_in, w_hh_t)                            # (n, G·H) pre-activations
        c_prev = c_carry[:n]
        if coupled:
            a_i, a_g, a_o = a.split(H, dim=1)
        else:
            a_i, a_f, a_g, a_o = a.split(H, dim=1)
        if peep is not None:
            a_i.addcmul_(p_i, c_prev)
            if not coupled:
                a_f.addcmul_(p_f, c_prev)
        i_t = a_i.sigmoid_()
        g_t = a_g.tanh_()
        f_t = 1 - i_t if coupled else a_f.sigmoid_()
        c_t = torch.addcmul(f_t * c_prev, i_t, g_t, out=c[rows])
        if peep is not None:
            a_o.addcmul_(p_o, c_t)
        o_t = a_o.sigmoid_()
        if m is None:
            h_t = torch.mul(o_t, c_t.tanh(), out=out[rows])
        else:
            m_t = torch.mul(o_t, c_t.tanh(), out=m[rows])
            h_t = torch.mm(m_t, w_hr.t(), out=out[rows])
        if zone_h is not None:                                       # zoneout: h̃_t → h_t
            h_t.lerp_(h_carry[:n], zone_h[rows])
        if zone_c is not None:                                       # c̃_t → c_t
            c_t.lerp_(c_prev, zone_c[rows])
        h_carry[:n] = h_t
        c_carry[:n] = c_t
    return out, c, m, h_carry, c_carry


def lstm_backward(dout: Tensor, dh_n: Tensor, dc_n: Tensor, gates: Tensor, c: Tensor,
                  c_prev_all: Tensor, w_hh: Tensor, w_hr: Tensor | None, peep: Tensor | None,
                  batch_sizes: list[int], reverse: bool, coupled: bool,
                  h_drop: Tensor | None = None, zone_h: Tensor | None = None,
                  zone_c: Tensor | None = None):
    r"""BPTT through the LSTM recurrence. Returns (dA (N, G·H), dh_0, dc_0, dH or None):
    dA the gradients of the gate pre-activations, dH the total ∂L/∂h_t of every step
    (kept only with projections, for the gradient of ``w_hr``).

    Derivation, per step, with dh = ∂L/∂h_t (output gradient + carried) and dc_next the
    carried ∂L/∂c_t through c_{t+1}; m_t = o_t ⊙ tanh(c_t), h_t = m_t or W_hr m_t:

        dm    = dh                       (dh W_hr with projections)
        da_o  = dm ⊙ tanh(c_t) ⊙ o(1 − o)                     o = σ(a_o)
        dc    = dc_next + dm ⊙ o ⊙ (1 − tanh²c_t) [+ da_o ⊙ p_o]   (o peeks at c_t)
        da_g  = dc ⊙ i ⊙ (1 − g²)                              g = tanh(a_g)
        da_i  = dc ⊙ g ⊙ i(1 − i),   da_f = dc ⊙ c_{t-1} ⊙ f(1 − f)
        coupled (f = 1 − i):  da_i = dc ⊙ (g − c_{t-1}) ⊙ i(1 − i)
        dc_{t-1} = dc ⊙ f [+ da_i ⊙ p_i + da_f ⊙ p_f]
        dh_{t-1} = dA W_hh                                     (dA = [da_i, da_f, da_g, da_o])

    With masks (module docstring): dh and dc_next are first split into the part through the
    candidate, (1 − d) ⊙ ·, used above with c̃_t in place of c_t, and the direct part
    d ⊙ ·, added to dh_{t-1} / dc_{t-1}; dh_{t-1} = (dA W_hh) ⊙ m with recurrent dropout.
    """
    N, H = c.shape
    dA = torch.empty_like(gates)
    dH = torch.empty_like(dout) if w_hr is not None else None
    dh_carry, dc_carry = dh_n.clone(), dc_n.clone()
    if peep is not None:
        p_i, p_f, p_o = (peep[:H], None, peep[H:]) if coupled else peep.split(H)
    for start, n in reversed(step_rows(batch_sizes, reverse)):
        rows = slice(start, start + n)
        dh = dout[rows] + dh_carry[:n]
        if zone_h is not None:
            dh_direct = dh * zone_h[rows]
            dh = dh - dh_direct
        if dH is not None:
            dH[rows] = dh
            dh = dh @ w_hr                                             # dm, (n, H)
        c_t, c_prev = c[rows], c_prev_all[rows]
        if coupled:
            i_t, g_t, o_t = gates[rows].split(H, dim=1)
            f_t = 1 - i_t
            da_i, da_g, da_o = dA[rows].split(H, dim=1)
        else:
            i_t, f_t, g_t, o_t = gates[rows].split(H, dim=1)
            da_i, da_f, da_g, da_o = dA[rows].split(H, dim=1)
        dc_next = dc_carry[:n]
        if zone_c is not None:
            c_t = f_t * c_prev + i_t * g_t                             # c̃_t
            dc_direct = dc_next * zone_c[rows]
            dc_next = dc_next - dc_direct
        tanh_c = c_t.tanh()
        torch.mul(dh * tanh_c, o_t * (1 - o_t), out=da_o)
        dc = dc_next + dh * o_t * (1 - tanh_c * tanh_c)
        if peep is not None:
            dc.addcmul_(da_o, p_o)
        torch.mul(dc * i_t, 1 - g_t * g_t, out=da_g)
        sig_i = i_t * (1 - i_t)
        if coupled:
            torch.mul(dc * (g_t - c_prev), sig_i, out=da_i)
        else:
            torch.mul(dc * g_t, sig_i, out=da_i)
            torch.mul(dc * c_prev, f_t * (1 - f_t), out=da_f)
        dc_prev = dc * f_t
        if peep is not None:
            dc_prev.addcmul_(da_i, p_i)
            if not coupled:
                dc_prev.addcmul_(da_f, p_f)
        if zone_c is not None:
            dc_prev += dc_direct
        dh_prev = dA[rows] @ w_hh
        if h_drop is not None:
            dh_prev *= h_drop[:n]
        if zone_h is not None:
            dh_prev += dh_direct
        dh_carry[:n] = dh_prev
        dc_carry[:n] = dc_prev
    return dA, dh_carry, dc_carry, dH


# -- LSTM ablations of Greff et al. (2015) ----------------------------------------------------
def gate_columns(coupled: bool, greff: Greff, H: int) -> dict[str, slice]:
    """Column block of each gate that has rows (see ``cells.lstm.gate_rows``)."""
    return {k: slice(j * H, (j + 1) * H) for j, k in enumerate(gate_rows(coupled, greff))}


def _peepholes(peep: Tensor | None, cols: dict[str, slice]) -> dict[str, Tensor]:
    names = [k for k in cols if k != "g"]
    return {} if peep is None else dict(zip(names, peep.chunk(len(names))))


def _gate(a: Tensor, cols: dict[str, slice], p: dict[str, Tensor], k: str,
          c_seen: Tensor) -> Tensor | None:
    """σ(a_k [+ p_k ⊙ c]) in place in ``a``, or None for an absent gate (constant 1)."""
    if k not in cols:
        return None
    a_k = a[:, cols[k]]
    return (a_k.addcmul_(p[k], c_seen) if k in p else a_k).sigmoid_()


def lstm_variant_forward(xw: Tensor, w_hh: Tensor, w_hr: Tensor | None, peep: Tensor | None,
                         w_gg: Tensor | None, h0: Tensor, c0: Tensor, batch_sizes: list[int],
                         reverse: bool, coupled: bool, greff: Greff):
    """:func:`lstm_forward` for any LSTM of ``cells.lstm`` (absent gates, no activations,
    FGR with ``w_gg`` (3H, 3H)). ``xw`` has the rows of ``gate_rows(coupled, greff)`` and
    becomes their activations. An absent gate is the constant 1 (nothing stored)."""
    N, H = xw.shape[0], c0.shape[1]
    out = xw.new_empty(N, h0.shape[1])
    c = xw.new_empty(N, H)
    m = xw.new_empty(N, H) if w_hr is not None else None
    h_carry, c_carry = h0.clone(), c0.clone()
    q_carry = xw.new_zeros(h0.shape[0], 3 * H) if w_gg is not None else None   # i, f, o at t−1
    cols = gate_columns(coupled, greff, H)
    p = _peepholes(peep, cols)
    w_hh_t = w_hh.t()
    for start, n in step_rows(batch_sizes, reverse):
        rows = slice(start, start + n)
        a = xw[rows].addmm_(h_carry[:n], w_hh_t)                     # (n, G·H) pre-activations
        if q_carry is not None:                                      # all gates present
            r = q_carry[:n] @ w_gg.t()                               # (n, 3H): to i, f, o
            a[:, : 2 * H] += r[:, : 2 * H]
            a[:, 3 * H:] += r[:, 2 * H:]
        c_prev = c_carry[:n]
        i_t = _gate(a, cols, p, "i", c_prev)
        f_t = 1 - i_t if coupled else _gate(a, cols, p, "f", c_prev)
        g_t = a[:, cols["g"]]
        if greff.input_activation:
            g_t.tanh_()
        c_t = torch.mul(c_prev, f_t, out=c[rows]) if f_t is not None else c[rows].copy_(c_prev)
        c_t.add_(g_t if i_t is None else i_t * g_t)
        o_t = _gate(a, cols, p, "o", c_t)
        act_c = c_t.tanh() if greff.cell_activation else c_t
        m_t = act_c if o_t is None else o_t * act_c
        if m is None:
            h_t = out[rows].copy_(m_t)
        else:
            h_t = torch.mm(m[rows].copy_(m_t), w_hr.t(), out=out[rows])
        h_carry[:n] = h_t
        c_carry[:n] = c_t
        if q_carry is not None:
            q_carry[:n] = torch.cat([i_t, f_t, o_t], dim=1)
    return out, c, m, h_carry, c_carry


def lstm_variant_backward(dout: Tensor, dh_n: Tensor, dc_n: Tensor, dq_n: Tensor | None,
                          gates: Tensor, c: Tensor, c_prev_all: Tensor, w_hh: Tensor,
                          w_hr: Tensor | None, peep: Tensor | None, w_gg: Tensor | None,
                          batch_sizes: list[int], reverse: bool, coupled: bool, greff: Greff):
    r"""BPTT of :func:`lstm_variant_forward`. Returns (dA, dh_0, dc_0, dq_0 or None, dH or
    None) as :func:`lstm_backward`, dq the carried gradient of FGR's previous gate
    activations q_{t-1} = [i; f; o]_{t-1}.

    Derivation, per step (notation of :func:`lstm_backward`; an absent gate is the
    constant 1 and has no dA block; act_c = tanh or identity (NOAF), act_g likewise (NIAF),
    act' its derivative, dq = [dq_i, dq_f, dq_o] the carry, 0 without FGR):

        m_t   = o ⊙ act_c(c_t),   dm = dh  (dh W_hr with projections)
        da_o  = (dm ⊙ act_c(c_t) + dq_o) ⊙ o(1 − o)
        dc    = dc_next + dm ⊙ o ⊙ act_c'(c_t) [+ da_o ⊙ p_o]
        da_g  = dc ⊙ i ⊙ act_g'(a_g)                           (1 − g² or 1)
        da_i  = (dc ⊙ g + dq_i) ⊙ i(1 − i),   da_f = (dc ⊙ c_{t-1} + dq_f) ⊙ f(1 − f)
        coupled (f = 1 − i):  da_i = dc ⊙ (g − c_{t-1}) ⊙ i(1 − i)
        dc_{t-1} = dc ⊙ f [+ da_i ⊙ p_i + da_f ⊙ p_f]
        dh_{t-1} = dA W_hh
        FGR ([a_i, a_f, a_o] += q_{t-1} W_ggᵀ):  dq_{t-1} = [da_i, da_f, da_o] W_gg
    """
    N, H = c.shape
    dA = torch.empty_like(gates)
    dH = torch.empty_like(dout) if w_hr is not None else None
    dh_carry, dc_carry = dh_n.clone(), dc_n.clone()
    dq_carry = dq_n.clone() if w_gg is not None else None
    cols = gate_columns(coupled, greff, H)
    p = _peepholes(peep, cols)
    for start, n in reversed(step_rows(batch_sizes, reverse)):
        rows = slice(start, start + n)
        dh = dout[rows] + dh_carry[:n]
        if dH is not None:
            dH[rows] = dh
            dh = dh @ w_hr                                             # dm, (n, H)
        g_rows, dA_t = gates[rows], dA[rows]
        act = {k: g_rows[:, s] for k, s in cols.items()}              # activations
        da = {k: dA_t[:, s] for k, s in cols.items()}
        dq = dict(zip("ifo", dq_carry[:n].split(H, dim=1))) if dq_carry is not None else {}
        i_t, g_t, o_t, c_prev = act.get("i"), act["g"], act.get("o"), c_prev_all[rows]
        f_t = 1 - i_t if coupled else act.get("f")
        c_t = c[rows]
        act_c = c_t.tanh() if greff.cell_activation else c_t
        dmo = dh if o_t is None else dh * o_t
        dc = dc_carry[:n] + (dmo * (1 - act_c * act_c) if greff.cell_activation else dmo)
        if o_t is not None:
            torch.mul(dh * act_c + dq.get("o", 0), o_t * (1 - o_t), out=da["o"])
            if "o" in p:
                dc.addcmul_(da["o"], p["o"])
        d_ig = dc if i_t is None else dc * i_t                         # ∂L/∂g
        if greff.input_activation:
            torch.mul(d_ig, 1 - g_t * g_t, out=da["g"])
        else:
            da["g"].copy_(d_ig)
        if coupled:
            torch.mul(dc * (g_t - c_prev), i_t * (1 - i_t), out=da["i"])
        else:
            if i_t is not None:
                torch.mul(dc * g_t + dq.get("i", 0), i_t * (1 - i_t), out=da["i"])
            if f_t is not None:
                torch.mul(dc * c_prev + dq.get("f", 0), f_t * (1 - f_t), out=da["f"])
        dc_prev = dc if f_t is None else dc * f_t
        for k in ("i", "f"):
            if k in p:
                dc_prev = dc_prev + da[k] * p[k]
        dh_carry[:n] = dA_t @ w_hh
        dc_carry[:n] = dc_prev
        if dq_carry is not None:
            dq_carry[:n] = torch.cat([dA_t[:, : 2 * H], dA_t[:, 3 * H:]], dim=1) @ w_gg
    return dA, dh_carry, dc_carry, dq_carry, dH


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())


# -- GRU --------------------------------------------------------------------------------
def gru_forward(xw: Tensor, w_hh: Tensor, b_hh: Tensor | None, h0: Tensor,
                batch_sizes: list[int], reverse: bool, reset_after: bool,
                h_drop: Tensor | None = None, zone_h: Tensor | None = None):
    """Returns (out (N, H), hw_n (N, H) or None, h_n (B, H)); ``xw`` (input projection with
    ``b_ih``) becomes the activations r, z, n. ``hw_n = W_hn h_{t-1} + b_hn`` is kept with
    ``reset_after`` (the reset gate multiplies it, so its gradient needs it)."""
    N, H = xw.shape[0], h0.shape[1]
    out = xw.new_empty(N, H)
    hw_n_all = xw.new_empty(N, H) if reset_after else None
    h_carry = h0.clone()
    w_rz, w_n = w_hh[: 2 * H], w_hh[2 * H:]
    b_rz, b_n = (None, None) if b_hh is None else (b_hh[: 2 * H], b_hh[2 * H:])
    for start, n in step_rows(batch_sizes, reverse):
        rows = slice(start, start + n)
        h_prev = h_carry[:n]
        h_in = h_prev if h_drop is None else h_prev * h_drop[:n]         # feeds W_hh
        a = xw[rows]
        a_rz, a_n = a[:, : 2 * H], a[:, 2 * H:]
        if reset_after:
            hw = _linear(h_in, w_hh, b_hh)                                # (n, 3H)
            r_t, z_t = a_rz.add_(hw[:, : 2 * H]).sigmoid_().split(H, dim=1)
            hw_n = hw_n_all[rows]
            hw_n.copy_(hw[:, 2 * H:])
            n_t = a_n.addcmul_(r_t, hw_n).tanh_()
        else:
            r_t, z_t = a_rz.add_(_linear(h_in, w_rz, b_rz)).sigmoid_().split(H, dim=1)
            q = r_t * h_in
            a_n.addmm_(q, w_n.t())
            if b_n is not None:
                a_n.add_(b_n)
            n_t = a_n.tanh_()
        h_t = torch.addcmul(n_t, z_t, h_prev - n_t, out=out[rows])    # (1 − z) n + z h
        if zone_h is not None:
            h_t.lerp_(h_prev, zone_h[rows])
        h_carry[:n] = h_t
    return out, hw_n_all, h_carry


def gru_backward(dout: Tensor, dh_n: Tensor, gates: Tensor, hw_n_all: Tensor | None,
                 h_prev_all: Tensor, w_hh: Tensor, batch_sizes: list[int], reverse: bool,
                 reset_after: bool, h_drop: Tensor | None = None,
                 zone_h: Tensor | None = None):
    r"""BPTT through the GRU recurrence. Returns (dA_x, dA_h, dh_0): the gradients of the
    input-side and recurrent-side pre-activations (the same tensor when not
    ``reset_after``), from which the caller forms the weight gradients.

    With dh = ∂L/∂h_t and h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}:

        da_n = dh ⊙ (1 − z) ⊙ (1 − n²);   da_z = dh ⊙ (h_{t-1} − n) ⊙ z(1 − z)
        reset_after:  (a_n = x-part + r ⊙ hw_n)
            da_r = da_n ⊙ hw_n ⊙ r(1 − r);  recurrent side: [da_r, da_z, da_n ⊙ r]
            dh_{t-1} = dh ⊙ z + [da_r, da_z, da_n ⊙ r] W_hh
        reset before: (a_n = x-part + W_hn (r ⊙ h_{t-1}) + b_hn)
            dq = da_n W_hn;  da_r = dq ⊙ h_{t-1} ⊙ r(1 − r)
            dh_{t-1} = dh ⊙ z + dq ⊙ r + [da_r, da_z] W_h{r,z}

    With masks: ĥ = m ⊙ h_{t-1} replaces h_{t-1} where it meets W_hh (so da_r uses ĥ before
    reset, and the terms through W_hh are multiplied by m); zoneout splits dh as in
    :func:`lstm_backward`.
    """
    H = dh_n.shape[1]
    dA_x = torch.empty_like(gates)
    dA_h = torch.empty_like(gates) if reset_after else dA_x
    dh_carry = dh_n.clone()
    w_rz, w_n = w_hh[: 2 * H], w_hh[2 * H:]
    for start, n in reversed(step_rows(batch_sizes, reverse)):
        rows = slice(start, start + n)
        dh = dout[rows] + dh_carry[:n]
        if zone_h is not None:
            dh_direct = dh * zone_h[rows]
            dh = dh - dh_direct
        h_prev = h_prev_all[rows]
        m = None if h_drop is None else h_drop[:n]
        r_t, z_t, n_t = gates[rows].split(H, dim=1)
        da_r, da_z, da_n = dA_x[rows].split(H, dim=1)
        torch.mul(dh * (1 - z_t), 1 - n_t * n_t, out=da_n)
        torch.mul(dh * (h_prev - n_t), z_t * (1 - z_t), out=da_z)
        if reset_after:
            torch.mul(da_n * hw_n_all[rows], r_t * (1 - r_t), out=da_r)
            dh_r, dh_z, dh_n_ = dA_h[rows].split(H, dim=1)
            dh_r.copy_(da_r)
            dh_z.copy_(da_z)
            torch.mul(da_n, r_t, out=dh_n_)
            if m is None:
                dh_prev = torch.addmm(dh * z_t, dA_h[rows], w_hh)
            else:
                dh_prev = torch.addcmul(dh * z_t, dA_h[rows] @ w_hh, m)
        else:
            dq = da_n @ w_n
            h_in = h_prev if m is None else h_prev * m
            torch.mul(dq * h_in, r_t * (1 - r_t), out=da_r)
            if m is None:
                dh_prev = torch.addmm(dh * z_t + dq * r_t, dA_x[rows, : 2 * H], w_rz)
            else:
                dh_prev = torch.addcmul(dh * z_t, dq * r_t + dA_x[rows, : 2 * H] @ w_rz, m)
        if zone_h is not None:
            dh_prev += dh_direct
        dh_carry[:n] = dh_prev
    return dA_x, dA_h, dh_carry


# -- RNN --------------------------------------------------------------------------------
def rnn_forward(xw: Tensor, w_hh: Tensor, h0: Tensor, batch_sizes: list[int], reverse: bool,
                relu: bool, h_drop: Tensor | None = None, zone_h: Tensor | None = None):
    """Returns (out, h_n); ``xw`` is overwritten with h̃_t = act(a_t), and ``out`` is
    ``xw`` itself unless zoneout makes h_t differ from h̃_t."""
    h_carry = h0.clone()
    w_hh_t = w_hh.t()
    out = xw if zone_h is None else torch.empty_like(xw)
    for start, n in step_rows(batch_sizes, reverse):
        rows = slice(start, start + n)
        h_in = h_carry[:n] if h_drop is None else h_carry[:n] * h_drop[:n]
        a = xw[rows].addmm_(h_in, w_hh_t)
        h_t = a.relu_() if relu else a.tanh_()
        if zone_h is not None:
            h_t = torch.lerp(h_t, h_carry[:n], zone_h[rows], out=out[rows])
        h_carry[:n] = h_t
    return out, h_carry


def rnn_backward(dout: Tensor, dh_n: Tensor, out: Tensor, w_hh: Tensor, batch_sizes: list[int],
                 reverse: bool, relu: bool, h_drop: Tensor | None = None,
                 zone_h: Tensor | None = None):
    """dA = dh ⊙ act'(a): (1 − h²) for tanh, [h > 0] for relu; dh_{t-1} = dA W_hh.
    Returns (dA, dh_0). ``out`` holds h̃_t = act(a_t); with masks dh is split as in
    :func:`lstm_backward` and dh_{t-1} = (dA W_hh) ⊙ m + d ⊙ dh."""
    dA = torch.empty_like(out)
    dh_carry = dh_n.clone()
    for start, n in reversed(step_rows(batch_sizes, reverse)):
        rows = slice(start, start + n)
        dh = dout[rows] + dh_carry[:n]
        if zone_h is not None:
            dh_direct = dh * zone_h[rows]
            dh = dh - dh_direct
        h_t = out[rows]
        if relu:
            torch.mul(dh, h_t > 0, out=dA[rows])
        else:
            torch.mul(dh, 1 - h_t * h_t, out=dA[rows])
        dh_prev = dA[rows] @ w_hh
        if h_drop is not None:
            dh_prev *= h_drop[:n]
        if zone_h is not None:
            dh_prev += dh_direct
        dh_carry[:n] = dh_prev
    return dA, dh_carry
