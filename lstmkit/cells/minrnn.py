r"""minGRU and minLSTM: the minimal GRU and LSTM of Feng, Tung, Ahmed, Bengio &
Hajimirsadeghi (2024), "Were RNNs All We Needed?", arXiv 2410.01201, §3. Their gates read
x_t only, never h_{t-1}, and there is no output gate and no tanh::

    minGRU:   z_t = σ(Linear_z(x_t))                    update gate
              h̃_t = Linear_h(x_t)                       candidate
              h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

    minLSTM:  f_t = σ(Linear_f(x_t)),  i_t = σ(Linear_i(x_t)),  h̃_t = Linear_h(x_t)
              f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)     (length-independent
              h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t                       scaling, §3.2.3)

Each is h_t = a_t ⊙ h_{t-1} + b_t with a_t, b_t computed from x_t alone — a linear
recurrence, which a parallel scan computes in O(log T) depth (training) and a loop in one
pass (inference). Recorded per step: the gates (``z``; ``f``, ``i``), the candidate h̃ as
``g`` and the state ``h``.

**The log-space form** (``log_space=True``; the paper's §3 "log-space" version, appendix
B): h̃_t = g(Linear_h(x_t)) with g(x) = x + ½ for x ≥ 0 and σ(x) for x < 0, so that every
candidate is positive and the scan can run on logarithms: log z_t = −softplus(−k_z),
log(1 − z_t) = −softplus(k_z); for minLSTM, with d = softplus(−k_f) − softplus(−k_i),
log f'_t = −softplus(d) and log i'_t = −softplus(−d); log g(x) = log(x + ½) or
−softplus(−x). The paper passes h_0 through g as well; here h_0 is taken as given
(default 0, as every recurrent module of torch.nn) and its term A_t h_0 is kept outside the
logarithms, so that h_n fed back as ``hx`` continues a sequence exactly; for a positive
h_0 that is the paper's function.

**The plain form** (``log_space=False``, the default) is the paper's equations as printed
(§3.1.2, §3.2.3), with h̃ of any sign and the same parameter count. It is the default
because it is the function the paper defines and analyses, because a state that can be
negative is what every other recurrent module here returns, and because the log-space trick
is a matter of computation, not of the model: lstmkit's scans compute the plain form just as
stably (:func:`log_scan` splits b_t into its positive and negative parts; the C++ kernel
needs no logarithms, see ``ops/csrc/minrnn.h``).

Parameter layout (torch.nn's names, one weight and one bias per layer and direction; no
``weight_hh``, since no gate reads h_{t-1})::

    minGRU    weight_ih_l{k}  W_z | W_h        (2H, I)     bias_ih_l{k}  b_z | b_h      (2H,)
    minLSTM   weight_ih_l{k}  W_f | W_i | W_h  (3H, I)     bias_ih_l{k}  b_f | b_i | b_h (3H,)

The paper's minGRU/minLSTM have the same Linear maps (its "O(2 d_h d_x)" and "O(3 d_h
d_x)" parameters, §3.1.2 and §3.2.3).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellSpec, Gates, LayerWeights, State, register

ROWS = {"mingru": ("z", "g"), "minlstm": ("f", "i", "g")}


def g_pos(x: Tensor) -> Tensor:
    """The paper's g: x + ½ for x ≥ 0, σ(x) for x < 0 (positive, continuous, increasing)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """log g(x), computed without forming g(x) for x < 0: log σ(x) = −softplus(−x) (the
    same expression as the paper's own listing, Feng et al. 2024, Appendix B)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -softplus(-x))


def _candidate(k_h: Tensor, log_space: bool) -> Tensor:
    return g_pos(k_h) if log_space else k_h


def mingru_step(x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None,
                log_space: bool = False) -> tuple[State, Gates]:
    """One step of minGRU, as the module docstring writes it (``h_in`` is ignored: no
    weight reads h_{t-1})."""
    (h,) = state                                                        # (B, H)
    k_z, k_h = F.linear(x_t, w.w_ih, w.b_ih).chunk(2, dim=1)
    z = torch.sigmoid(k_z)
    h_tilde = _candidate(k_h, log_space)
    h_new = (1 - z) * h + z * h_tilde
    return (h_new,), {"z": z, "g": h_tilde}


def minlstm_step(x_t: Tensor, state: State, w: LayerWeights, *, h_in: Tensor | None = None,
                 log_space: bool = False) -> tuple[State, Gates]:
    """One step of minLSTM, as the module docstring writes it."""
    (h,) = state
    k_f, k_i, k_h = F.linear(x_t, w.w_ih, w.b_ih).chunk(3, dim=1)
    f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
    f_n, i_n = f / (f + i), i / (f + i)
    h_tilde = _candidate(k_h, log_space)
    h_new = f_n * h + i_n * h_tilde
    return (h_new,), {"f": f, "i": i, "g": h_tilde}


# -- the coefficients of h_t = a_t ⊙ h_{t-1} + b_t, in log space -------------------------------
def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x). torch's default switches to x above 20, an absolute error of e^{-20}
    ≈ 2·10⁻⁹ in every log-coefficient, which a long scan sums; from 40 on, e^{-40} is below
    float64's rounding of x (and e^40 still fits a float32)."""
    return F.softplus(x, threshold=40.0)


def log_coefficients(family: str, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From the pre-activations ``k`` (…, K·H) of every step: log a_t, log u_t (the weight
    of the candidate: z_t or i'_t) and k_h. Stable for any k: only softplus and sums."""
    if family == "mingru":
        k_z, k_h = k.chunk(2, dim=-1)
        return -softplus(k_z), -softplus(-k_z), k_h
    k_f, k_i, k_h = k.chunk(3, dim=-1)
    d = softplus(-k_f) - softplus(-k_i)          # log(i/f) = log i − log f, negated
    return -softplus(d), -softplus(-d), k_h


#: steps per chunk of :func:`log_scan`: within a chunk the log-space scan, across chunks a
#: loop (T / CHUNK steps); bounds |A_t| and so the precision lost to it (see log_scan)
CHUNK = 64


def log_scan(log_a: Tensor, log_u: Tensor, k_h: Tensor, h0: Tensor, log_space: bool,
             chunk: int = CHUNK) -> Tensor:
    """h_t = a_t h_{t-1} + u_t h̃_t for every t at once (time is dim 0), by the log-space
    scan of Heinsen (2023) as Feng et al. use it, in chunks of ``chunk`` steps:

        A_t = Σ_{s≤t} log a_s,    h_t = e^{A_t} h_0 + Σ_{s≤t} e^{A_t − A_s} u_s h̃_s
            = e^{A_t} h_0 + e^{A_t + logcumsumexp_s(log u_s + log h̃_s − A_s)}

    Every exponent is ≤ 0 after logcumsumexp's own max-shift, so nothing overflows or
    underflows to a wrong value at any length. A positive h̃ (the log-space form: h̃ =
    g(k_h)) needs one logcumsumexp; a signed h̃ (the plain form) two: h̃ = p − n with
    p = 1 + (|h̃| + h̃)/2 and n = 1 + (|h̃| − h̃)/2, both ≥ 1, so every logarithm is finite
    and the derivative is right at h̃ = 0 too; since the weights e^{A_t − A_s} u_s sum to
    at most 1, the difference loses at most a few ulp of 1 + max|h̃|, as h̃ itself does.

    What the log-space form does cost is precision: A_t and the logcumsumexp are added
    with |A_t| growing linearly in t, so h_t keeps |A_t| · ε of relative precision (ε = 2⁻²⁴
    in float32), and autograd's backward cancels terms of that size. The scan therefore
    runs within chunks of ``chunk`` steps (all chunks at once) and carries the state from
    chunk to chunk in a loop of T / chunk steps: |A_t| stays below ``chunk`` · max log(1/a).
    """
    T = log_a.shape[0]
    if T <= chunk:
        return _log_scan(log_a, log_u, k_h, h0, log_space)
    n = -(-T // chunk)
    pad = n * chunk - T                         # padding at the end: read by no real step

    def chunks(t: Tensor) -> Tensor:            # (T, B, H) -> (chunk, n, B, H)
        t = torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t
        return t.view(n, chunk, *t.shape[1:]).transpose(0, 1)
    la, lu, kh = chunks(log_a), chunks(log_u), chunks(k_h)
    local = _log_scan(la, lu, kh, kh.new_zeros(()), log_space)            # h_0 = 0 per chunk
    decay = torch.exp(torch.cumsum(la, dim=0))                            # e^{A_t − A_start}
    h, outs = h0, []
    for c in range(n):
        h_c = local[:, c] + decay[:, c] * h
        outs.append(h_c)
        h = h_c[-1]
    return torch.cat(outs)[:T]


def _log_scan(log_a: Tensor, log_u: Tensor, k_h: Tensor, h0: Tensor, log_space: bool
              ) -> Tensor:
    """One log-space scan over dim 0 (see :func:`log_scan`)."""
    A = torch.cumsum(log_a, dim=0)
    h = torch.exp(A) * h0                                                # e^{A_t} h_0
    if log_space:
        return h + torch.exp(A + torch.logcumsumexp(log_u + log_g(k_h) - A, dim=0))
    half = k_h.abs() / 2
    p, n = 1 + half + k_h / 2, 1 + half - k_h / 2                       # h̃ = p − n
    A_p = A + torch.logcumsumexp(log_u + torch.log(p) - A, dim=0)
    A_n = A + torch.logcumsumexp(log_u + torch.log(n) - A, dim=0)
    return h + (torch.exp(A_p) - torch.exp(A_n))


def gates_of(family: str, k: Tensor, log_space: bool) -> Gates:
    """The recorded gates of the pre-activations ``k`` (…, K·H): as the steps report them."""
    if family == "mingru":
        k_z, k_h = k.chunk(2, dim=-1)
        return {"z": torch.sigmoid(k_z), "g": _candidate(k_h, log_space)}
    k_f, k_i, k_h = k.chunk(3, dim=-1)
    return {"f": torch.sigmoid(k_f), "i": torch.sigmoid(k_i), "g": _candidate(k_h, log_space)}


def _spec(family: str, step, log_space: bool) -> CellSpec:
    if not isinstance(log_space, bool):
        raise TypeError(f"{family}: log_space must be True or False, got {log_space!r}")
    from ..ops import scan  # the whole-layer paths (ops imports cells: imported here)
    return CellSpec(
        family=family,
        step=partial(step, log_space=log_space),
        gate_rows=(),                  # no gate reads h_{t-1}: no weight_hh
        input_rows=ROWS[family],
        gates=ROWS[family],
        n_states=1,
        options=(("log_space", log_space),),
        scan=partial(scan.select, family=family, log_space=log_space),
    )


def mingru_spec(*, log_space: bool = False) -> CellSpec:
    """minGRU of Feng et al. (2024); ``log_space`` selects the paper's log-space form."""
    return _spec("mingru", mingru_step, log_space)


def minlstm_spec(*, log_space: bool = False) -> CellSpec:
    """minLSTM of Feng et al. (2024); ``log_space`` selects the paper's log-space form."""
    return _spec("minlstm", minlstm_step, log_space)


register("mingru", mingru_spec)
register("minlstm", minlstm_spec)
