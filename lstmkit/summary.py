"""Counting parameters, and a per-layer, per-gate table that explains the count."""

from __future__ import annotations

import math

from torch import nn

from .nn.base import RecurrentBase
from .nn.cells import RecurrentCell

_GATE_NAMES = {"i": "input", "f": "forget", "g": "candidate", "o": "output",
               "r": "reset", "z": "update", "n": "new", "h": "hidden"}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``model`` (only those with ``requires_grad`` if asked)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_parameters expects an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _as_lstmkit(model: nn.Module) -> nn.Module:
    from . import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
    for ours in (LSTM, GRU, RNN, LSTMCell, GRUCell, RNNCell):
        if type(model) is ours._torch_class:
            return ours.from_torch(model)
    return model


def summary(model: nn.Module) -> str:
    """A table of every lstmkit layer in ``model``: per layer, direction and gate, the
    shapes and parameter counts, with the PyTorch (two-bias) and textbook (one-bias)
    formulas. torch.nn.LSTM/GRU/RNN are summarised as their lstmkit equivalents."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary expects an nn.Module, got {type(model).__name__}")
    model = _as_lstmkit(model)
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (RecurrentBase, RecurrentCell))
              or hasattr(m, "_lstmkit_summary")]             # modules beside the engine
    if not layers:
        raise ValueError(f"summary: {type(model).__name__} contains no lstmkit LSTM, GRU or "
                         "RNN layer")
    parts = [m._lstmkit_summary(name or type(m).__name__) if hasattr(m, "_lstmkit_summary")
             else _module_summary(name or type(m).__name__, m) for name, m in layers]
    total = count_parameters(model)
    rnn_total = sum(count_parameters(m) for _, m in layers)
    if total != rnn_total:
        parts.append(f"other parameters: {total - rnn_total:,}")
    parts.append(f"total parameters: {total:,}")
    return "\n\n".join(parts)


def _module_summary(title: str, m: RecurrentBase) -> str:
    cell, H, P = m.cell, m.hidden_size, m.proj_size
    R = m.output_size                      # columns of W_h*: H, or P with projections
    rows = [("layer", "dir", "gate", "W_i*", "W_h*", "biases", "peephole", "params")]
    for layer in range(m.num_layers):
        I = m.input_size if layer == 0 else R * m.num_directions
        for d in range(m.num_directions):
            w = m.layer_weights(layer, d)
            peep_gates = [g for g in cell.gate_rows if g != "g"] if w.peephole is not None else []
            # R; sLSTM: H/num_heads (head-wise W_h*); minGRU/minLSTM have no W_h*
            R_h = R if w.w_hh is None else w.w_hh.shape[1]
            for g in _row_gates(cell):
                has_p, has_x, has_h = g in peep_gates, g in cell.x_rows, g in cell.gate_rows
                n_b = (has_x + has_h) * H if m.bias else 0
                n = H * I * has_x + H * R_h * has_h + n_b + (H if has_p else 0)
                label = "cell input" if (g, cell.family) == ("z", "slstm") else _GATE_NAMES[g]
                rows.append((str(layer), "rev" if d else "fwd", f"{g} ({label})",
                             f"{H}x{I}" if has_x else "-", f"{H}x{R_h}" if has_h else "-",
                             f"{n_b // H}x{H}" if n_b else "-",
                             str(H) if has_p else "-", f"{n:,}"))
            if w.w_hr is not None:
                rows.append((str(layer), "rev" if d else "fwd", "W_hr (projection)",
                             "-", f"{P}x{H}", "-", "-", f"{P * H:,}"))
            for e, t in zip(cell.extra_params, w.extra):      # e.g. weight_gg (FGR)
                if t is None:                                 # not in this layer
                    continue
                rows.append((str(layer), "rev" if d else "fwd", e.name, "-",
                             "x".join(map(str, t.shape)), "-", "-", f"{t.numel():,}"))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(wd) if k == 7 else c.ljust(wd) for k, (c, wd) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return f"{title}: {m!r}\n" + "\n".join(lines) + "\n" + _formulas(m)


def _row_gates(cell) -> tuple[str, ...]:
    """The gates with rows in W_ih or W_hh; where the two differ (the MUTs: a gate may lack
    either), in the order of the recorded gates."""
    if cell.x_rows == cell.gate_rows:
        return cell.gate_rows
    return tuple(g for g in cell.gates if g in cell.x_rows or g in cell.gate_rows)


def _formulas(m: RecurrentBase) -> str:
    """Per-layer count by formula, PyTorch layout and textbook, and why they differ."""
    if m.cell.x_rows != m.cell.gate_rows:
        return _formulas_split(m)
    if m.cell.family == "slstm":
        return _formulas_heads(m)
    G, H, R = len(m.cell.gate_rows), m.hidden_size, m.output_size
    hh = "H·P" if m.proj_size else "H·H"
    sq = "H·P" if m.proj_size else "H²"
    out = [f"per layer and direction (G={G} gate blocks, H={H}"
           + (f", P={m.proj_size}" if m.proj_size else "") + "):"]
    extras = ""
    if m.proj_size:
        extras += " + P·H"
    if m.cell.option("peephole"):
        extras += f" + {G - 1}H"
    for layer in range(m.num_layers):
        I = m.input_size if layer == 0 else R * m.num_directions
        base = H * I + H * R
        torch_n = G * (base + (2 * H if m.bias else 0))
        book_n = G * (base + (H if m.bias else 0))
        extra_n = (m.proj_size * H if m.proj_size else 0) + \
                  ((G - 1) * H if m.cell.option("peephole") else 0)
        shapes = [e.shape(H, I, R) for e in m.cell.extra_params if e.present(layer, m.bias)]
        extras_l = extras + "".join(" + " + "·".join(map(str, sh)) for sh in shapes)
        extra_n += sum(math.prod(sh) for sh in shapes)
        if m.bias:
            out.append(f"  layer {layer} (I={I}): PyTorch layout, two biases: "
                       f"{G}·(H·I + {hh} + 2H){extras_l} = {torch_n + extra_n:,}; "
                       f"textbook, one bias: {G}·({sq} + H·I + H){extras_l} = "
                       f"{book_n + extra_n:,}")
        else:
            out.append(f"  layer {layer} (I={I}): no biases: {G}·(H·I + {hh}){extras_l} = "
                       f"{torch_n + extra_n:,}")
    if m.bias:
        out.append(f"  The two counts differ by {G}H per layer and direction: PyTorch (and "
                   "cuDNN) keep two bias vectors b_i* and b_h* that only ever appear as their "
                   "sum, so one of them adds parameters but no expressive power.")
    out.append(f"  this module: {count_parameters(m):,} parameters")
    return "\n".join(out)


def _formulas_split(m: RecurrentBase) -> str:
    """:func:`_formulas` for a family whose W_ih and W_hh have different row blocks (the
    MUTs): G_x blocks read x_t, G_h blocks read h; K gates in all."""
    cell, H = m.cell, m.hidden_size
    G_x, G_h = len(cell.x_rows), len(cell.gate_rows)
    K = len(set(cell.x_rows) | set(cell.gate_rows))
    out = [f"per layer and direction (W_ih rows {'|'.join(cell.x_rows)}: G_x={G_x}; "
           f"W_hh rows {'|'.join(cell.gate_rows)}: G_h={G_h}; {K} gates; H={H}):"]
    for layer in range(m.num_layers):
        I = m.input_size if layer == 0 else H * m.num_directions
        if m.bias:
            torch_n = G_x * (H * I + H) + G_h * (H * H + H)
            book_n = G_x * H * I + G_h * H * H + K * H
            out.append(f"  layer {layer} (I={I}): PyTorch layout, a bias per row block: "
                       f"{G_x}·(H·I + H) + {G_h}·(H² + H) = {torch_n:,}; textbook, one bias "
                       f"per gate: {G_x}·H·I + {G_h}·H² + {K}H = {book_n:,}")
        else:
            out.append(f"  layer {layer} (I={I}): no biases: {G_x}·H·I + {G_h}·H² = "
                       f"{G_x * H * I + G_h * H * H:,}")
    out.append(f"  this module: {count_parameters(m):,} parameters")
    return "\n".join(out)


def _formulas_heads(m: RecurrentBase) -> str:
    """:func:`_formulas` for sLSTM: W_h* is block-diagonal over K heads, so each gate has
    K blocks of d×d = H·d recurrent weights (d = H/K) instead of H·H."""
    H, K = m.hidden_size, int(m.cell.option("num_heads"))
    d = H // K
    out = [f"per layer and direction (4 gate blocks i|f|z|o, H={H}, K={K} heads of d={d}; "
           f"W_h* block-diagonal: weight_hh is (4H, d), head k's rows 4dk..4d(k+1)):"]
    for layer in range(m.num_layers):
        I = m.input_size if layer == 0 else H * m.num_directions
        if m.bias:
            out.append(f"  layer {layer} (I={I}): PyTorch layout, two biases: "
                       f"4·(H·I + H·d + 2H) = {4 * (H * I + H * d + 2 * H):,}; "
                       f"one bias (as NX-AI's): 4·(H·I + H·d + H) = "
                       f"{4 * (H * I + H * d + H):,}; a dense R would add 4·H·(H − d) = "
                       f"{4 * H * (H - d):,}")
        else:
            out.append(f"  layer {layer} (I={I}): no biases: 4·(H·I + H·d) = "
                       f"{4 * (H * I + H * d):,}")
    out.append(f"  this module: {count_parameters(m):,} parameters")
    return "\n".join(out)
