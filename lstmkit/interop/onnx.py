"""lstmkit modules → ONNX ``LSTM`` / ``GRU`` / ``RNN`` operators: ``export_module``.

    lstmkit.interop.onnx.export_module(model, "model.onnx", sequence_lens=True,
                                       initial_state=True)

Each layer becomes one standard ONNX recurrent operator (opset 17), stacked layers a chain.
The translation, checked against the ONNX operator specification (and design.md §5):

* LSTM: ONNX gate order i, o, f, c (ours i, f, g, o); ``B`` = [input biases, recurrent
  biases]; peepholes go to ``P`` in the order i, o, f; ``coupled=True`` is
  ``input_forget=1`` (f = 1 − i), its absent forget rows exported as zeros;
* GRU: ONNX order z, r, h (ours r, z, n); ``reset_after=True`` is ``linear_before_reset=1``;
* RNN: ``activations=["Tanh"]`` or ``["Relu"]``;
* ``bidirectional`` is ``direction="bidirectional"``; ``sequence_lens`` (int32, one per
  sequence) gives what a PackedSequence gives: zero outputs past each length and final states
  at each sequence's last step.

The graph's inputs are ``input`` ((T, N, I), or (N, T, I) with ``batch_first``), optionally
``sequence_lens`` (N,) int32 and ``h0`` / ``c0`` (layers·directions, N, H); its outputs are
``output`` and ``h_n`` (and ``c_n``), shaped as the module returns them. ``proj_size`` has no
ONNX operator and raises a ValueError, as does anything else ONNX cannot express. Needs the
``onnx`` package. The model's IR version is set to 8, which current onnxruntime releases read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OPSET, IR_VERSION = 17, 8

# row blocks: lstmkit (torch.nn) order → ONNX order
LSTM_ROWS, LSTM_COUPLED_ROWS, ONNX_LSTM = "ifgo", "igo", "iofg"
PEEP, PEEP_COUPLED, ONNX_PEEP = "ifo", "io", "iof"
GRU_ROWS, ONNX_GRU = "rzn", "zrn"


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package: pip install onnx") from e
    return onnx


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def _blocks(a: np.ndarray, H: int, names: str, order: str, fill: dict[str, np.ndarray]):
    """Reorder the H-row blocks of ``a`` (named by ``names``) into ``order``; blocks in
    ``fill`` (absent from ``a``) are taken from there."""
    parts = dict(zip(names, np.split(a, len(names))))
    parts.update(fill)
    return np.concatenate([parts[k] for k in order])


def _layer_tensors(module, layer: int, suffix: str) -> dict[str, np.ndarray]:
    """W, R, B (and P) of one direction of one layer, in ONNX layout (without the leading
    direction axis)."""
    H, family = module.hidden_size, module.cell.family
    p = dict(module.named_parameters())
    w_ih, w_hh = _np(p[f"weight_ih_l{layer}{suffix}"]), _np(p[f"weight_hh_l{layer}{suffix}"])
    G = w_ih.shape[0] // H
    has_bias = f"bias_ih_l{layer}{suffix}" in p
    b_ih = _np(p[f"bias_ih_l{layer}{suffix}"]) if has_bias else np.zeros(G * H, np.float32)
    b_hh = _np(p[f"bias_hh_l{layer}{suffix}"]) if has_bias else np.zeros(G * H, np.float32)
    if family == "lstm":
        coupled = bool(module.cell.option("coupled"))
        names = LSTM_COUPLED_ROWS if coupled else LSTM_ROWS
        zero_w = {"f": np.zeros((H, w_ih.shape[1]), np.float32)} if coupled else {}
        zero_r = {"f": np.zeros((H, H), np.float32)} if coupled else {}
        zero_b = {"f": np.zeros(H, np.float32)} if coupled else {}
        out = {"W": _blocks(w_ih, H, names, ONNX_LSTM, zero_w),
               "R": _blocks(w_hh, H, names, ONNX_LSTM, zero_r),
               "B": np.concatenate([_blocks(b_ih, H, names, ONNX_LSTM, zero_b),
                                    _blocks(b_hh, H, names, ONNX_LSTM, zero_b)])}
        peep = p.get(f"peephole_l{layer}{suffix}")
        if peep is not None:
            peep = _np(peep)
            pn = PEEP_COUPLED if coupled else PEEP
            out["P"] = _blocks(peep, H, pn, ONNX_PEEP, {"f": np.zeros(H, np.float32)}
                               if coupled else {})
        return out
    if family == "gru":
        return {"W": _blocks(w_ih, H, GRU_ROWS, ONNX_GRU, {}),
                "R": _blocks(w_hh, H, GRU_ROWS, ONNX_GRU, {}),
                "B": np.concatenate([_blocks(b_ih, H, GRU_ROWS, ONNX_GRU, {}),
                                     _blocks(b_hh, H, GRU_ROWS, ONNX_GRU, {})])}
    return {"W": w_ih, "R": w_hh, "B": np.concatenate([b_ih, b_hh])}


def _check(module) -> None:
    from ..nn.base import RecurrentBase
    if not isinstance(module, RecurrentBase):
        raise ValueError(f"export_module takes an lstmkit LSTM, GRU or RNN, got "
                         f"{type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError("ONNX's LSTM operator has no projection (proj_size); export a model "
                         "without proj_size")
    _refuse_greff(module)
    if module.cell.option("layer_norm"):
        raise ValueError("ONNX's LSTM and GRU operators have no layer normalisation; a model "
                         "with layer_norm=True cannot be exported")
    if module.cell.onnx is None:
        raise ValueError(f"{type(module).__name__} has no standard ONNX operator; export the "
                         "whole model with lstmkit.interop.onnx.export (its equations then "
                         "become plain ONNX operators)")
    reg = getattr(module, "regularization", None)
    if reg is not None and (reg.zoneout_c or reg.zoneout_h):
        raise ValueError("zoneout changes the test-time recurrence (h_t = z h_{t-1} + (1 - z) "
                         "h̃_t), which ONNX's recurrent operators cannot express")


def _refuse_greff(model: torch.nn.Module) -> None:
    """ONNX's LSTM has every gate, tanh activations and no gate-to-gate recurrence."""
    for m in model.modules():
        cell = getattr(m, "cell", None)
        if cell is not None and cell.option("greff") is not None:
            raise ValueError(f"ONNX's LSTM operator cannot express the Greff et al. (2015) "
                             f"ablation {m._variant_options()} (absent gates, identity "
                             "activations or full gate recurrence); export a standard, "
                             "peephole or coupled LSTM")


def export_module(module, path: str | Path, *, sequence_lens: bool = False,
                  initial_state: bool = False) -> Path:
    """Write ``module`` (an lstmkit LSTM, GRU or RNN) as an ONNX model; see the module
    docstring for the graph's inputs and outputs."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    _check(module)
    family, H, L = module.cell.family, module.hidden_size, module.num_layers
    D = 2 if module.bidirectional else 1
    I = module.input_size
    op = module.cell.onnx
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["N", "T", I] if module.batch_first else ["T", "N", I])]
    x = "input"
    if module.batch_first:
        nodes.append(helper.make_node("Transpose", ["input"], ["x_tn"], perm=[1, 0, 2]))
        x = "x_tn"
    if sequence_lens:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["N"]))
    states = ["h0", "c0"] if family == "lstm" else ["h0"]
    if initial_state:
        inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, [L * D, "N", H])
                   for s in states]
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "flat_shape"))
    finals: dict[str, list[str]] = {"h": [], "c": []}
    for layer in range(L):
        per_dir = [_layer_tensors(module, layer, s) for s in ([""] + ["_reverse"] * (D - 1))]
        names = []
        for key in ("W", "R", "B", "P"):
            if key not in per_dir[0]:
                continue
            name = f"{key}_l{layer}"
            inits.append(numpy_helper.from_array(np.stack([d[key] for d in per_dir]), name))
            names.append(name)
        op_inputs = [x, names[0], names[1], names[2],
                     "sequence_lens" if sequence_lens else ""]
        for s in states:
            if initial_state:
                sliced = f"{s}_l{layer}"
                inits.append(numpy_helper.from_array(np.array([layer * D], np.int64),
                                                     f"{sliced}_start"))
                inits.append(numpy_helper.from_array(np.array([(layer + 1) * D], np.int64),
                                                     f"{sliced}_end"))
                inits.append(numpy_helper.from_array(np.array([0], np.int64), f"{sliced}_ax"))
                nodes.append(helper.make_node("Slice", [s, f"{sliced}_start", f"{sliced}_end",
                                                        f"{sliced}_ax"], [sliced]))
                op_inputs.append(sliced)
            else:
                op_inputs.append("")
        if "P" in per_dir[0]:
            op_inputs.append(names[3])
        while op_inputs and op_inputs[-1] == "":
            op_inputs.pop()
        attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
        if family == "lstm" and module.cell.option("coupled"):
            attrs["input_forget"] = 1
        if family == "gru":
            attrs["linear_before_reset"] = int(bool(module.cell.option("reset_after", True)))
        if family == "rnn":
            attrs["activations"] = ["Relu" if module.cell.option("nonlinearity") == "relu"
                                    else "Tanh"] * D
        y = f"y_l{layer}"
        outs = [y, f"yh_l{layer}"] + ([f"yc_l{layer}"] if family == "lstm" else [])
        nodes.append(helper.make_node(op, op_inputs, outs, **attrs))
        finals["h"].append(outs[1])
        if family == "lstm":
            finals["c"].append(outs[2])
        # Y (T, D, N, H) → (T, N, D·H), the next layer's input
        nodes.append(helper.make_node("Transpose", [y], [f"{y}_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"{y}_t", "flat_shape"], [f"x_l{layer + 1}"]))
        x = f"x_l{layer + 1}"
    if module.batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["output"], perm=[1, 0, 2]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["output"]))
    nodes.append(helper.make_node("Concat", finals["h"], ["h_n"], axis=0))
    outputs = [helper.make_tensor_value_info(
        "output", TensorProto.FLOAT, ["N", "T", D * H] if module.batch_first
        else ["T", "N", D * H]),
        helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [L * D, "N", H])]
    if family == "lstm":
        nodes.append(helper.make_node("Concat", finals["c"], ["c_n"], axis=0))
        outputs.append(helper.make_tensor_value_info("c_n", TensorProto.FLOAT, [L * D, "N", H]))
    graph = helper.make_graph(nodes, f"lstmkit_{family}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lstmkit")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, path)
    return path


# -- whole models: torch.onnx.export with translations of lstmkit's custom ops ----------------
def _translations() -> dict:
    """ONNX translations of lstmkit::lstm_layer, gru_layer and rnn_layer (padded input,
    one direction each: torch.onnx.export sees every layer and direction as one op)."""
    from onnxscript import opset18 as op

    def const(values, dtype="int64"):
        return op.Constant(value=onnx_tensor(values, dtype))

    def onnx_tensor(values, dtype):
        from onnx import numpy_helper
        return numpy_helper.from_array(np.array(values, dtype=dtype))

    def reorder(t, names: str, order: str, zero_like=None):
        if names == order:
            return t
        parts = dict(zip(names, op.Split(t, axis=0, num_outputs=len(names)), strict=True))
        for k in order:
            if k not in parts:
                parts[k] = op.Mul(parts[zero_like], const(0.0, "float32"))
        return op.Concat(*[parts[k] for k in order], axis=0)

    def frame(batch_sizes, what):
        if len(set(batch_sizes)) != 1:
            raise ValueError(f"ONNX export of a whole model takes padded input; for "
                             f"PackedSequence export the {what} module with export_module("
                             "..., sequence_lens=True)")
        return len(batch_sizes), batch_sizes[0]

    def zeros(shape):
        return op.Expand(const(0.0, "float32"), const(shape))

    def biases(b_ih, b_hh, names, order, n):
        if b_ih is None:
            return op.Unsqueeze(zeros([2 * n]), const([0]))
        zl = names[0]
        return op.Unsqueeze(op.Concat(reorder(b_ih, names, order, zl),
                                      reorder(b_hh, names, order, zl), axis=0), const([0]))

    def unpack(family, weights, config):
        cell, w = library.parse_config(family, config, weights)
        if w.w_hr is not None:
            raise ValueError("ONNX's LSTM operator has no projection (proj_size)")
        return cell, w

    def placeholders(cell, n: int):
        """The op's outputs beyond the sequence and the final states, which nothing
        after an exported op reads (saved activations, buffers)."""
        return [zeros([0])] * n

    def lstm(x, states0, weights, side, masks, batch_sizes, reverse, config, kernels):
        cell, w = unpack("lstm", weights, config)
        coupled = bool(cell.option("coupled"))
        h0, c0 = states0
        T, B = frame(batch_sizes, "LSTM")
        H = int(w.w_hh.shape[1])
        names, order = (LSTM_COUPLED_ROWS if coupled else LSTM_ROWS), ONNX_LSTM
        W = op.Unsqueeze(reorder(w.w_ih, names, order, "i"), const([0]))
        R = op.Unsqueeze(reorder(w.w_hh, names, order, "i"), const([0]))
        Bias = biases(w.b_ih, w.b_hh, names, order, 4 * H)
        P = None
        if w.peephole is not None:
            P = op.Unsqueeze(reorder(w.peephole, PEEP_COUPLED if coupled else PEEP, ONNX_PEEP,
                                     "i"), const([0]))
        X = op.Reshape(x, const([T, B, -1]))
        Y, Y_h, Y_c = op.LSTM(X, W, R, Bias, None, op.Unsqueeze(h0, const([0])),
                              op.Unsqueeze(c0, const([0])), P, hidden_size=H,
                              direction="reverse" if reverse else "forward",
                              input_forget=int(coupled))
        return [op.Reshape(Y, const([T * B, H])), zeros([0]), op.Squeeze(Y_h, const([0])),
                op.Squeeze(Y_c, const([0])), *placeholders(cell, 2)]

    def gru(x, states0, weights, side, masks, batch_sizes, reverse, config, kernels):
        cell, w = unpack("gru", weights, config)
        reset_after = bool(cell.option("reset_after", True))
        T, B = frame(batch_sizes, "GRU")
        H = int(w.w_hh.shape[1])
        W = op.Unsqueeze(reorder(w.w_ih, GRU_ROWS, ONNX_GRU), const([0]))
        R = op.Unsqueeze(reorder(w.w_hh, GRU_ROWS, ONNX_GRU), const([0]))
        Bias = biases(w.b_ih, w.b_hh, GRU_ROWS, ONNX_GRU, 3 * H)
        X = op.Reshape(x, const([T, B, -1]))
        Y, Y_h = op.GRU(X, W, R, Bias, None, op.Unsqueeze(states0[0], const([0])),
                        hidden_size=H, direction="reverse" if reverse else "forward",
                        linear_before_reset=int(reset_after))
        return [op.Reshape(Y, const([T * B, H])), op.Squeeze(Y_h, const([0])),
                *placeholders(cell, 3 if reset_after else 2)]

    def rnn(x, states0, weights, side, masks, batch_sizes, reverse, config, kernels):
        cell, w = unpack("rnn", weights, config)
        T, B = frame(batch_sizes, "RNN")
        H = int(w.w_hh.shape[1])
        X = op.Reshape(x, const([T, B, -1]))
        Bias = biases(w.b_ih, w.b_hh, "h", "h", H)
        Y, Y_h = op.RNN(X, op.Unsqueeze(w.w_ih, const([0])), op.Unsqueeze(w.w_hh, const([0])),
                        Bias, None, op.Unsqueeze(states0[0], const([0])), hidden_size=H,
                        direction="reverse" if reverse else "forward",
                        activations=["Relu" if cell.option("nonlinearity") == "relu"
                                     else "Tanh"])
        return [op.Reshape(Y, const([T * B, H])), op.Squeeze(Y_h, const([0])),
                *placeholders(cell, 2)]

    from ..ops import library  # noqa: F401  (registers the ops)
    return {torch.ops.lstmkit.lstm_layer.default: lstm,
            torch.ops.lstmkit.gru_layer.default: gru,
            torch.ops.lstmkit.rnn_layer.default: rnn}


def export(model: torch.nn.Module, args: tuple, path: str | Path, **kwargs) -> Path:
    """``torch.onnx.export`` of any model containing lstmkit layers (padded input): each
    layer and direction becomes ONNX ``LSTM`` / ``GRU`` / ``RNN``. Needs ``onnx`` and
    ``onnxscript``; ``kwargs`` go to ``torch.onnx.export``."""
    _refuse_greff(model)
    from ..ops.library import exporting_onnx
    path = Path(path)
    was = model.training
    model.eval()
    try:
        with exporting_onnx():
            program = torch.onnx.export(model, args, dynamo=True, verbose=False,
                                        custom_translation_table=_translations(), **kwargs)
    finally:
        model.train(was)
    program.save(str(path))
    onnx = _onnx()
    proto = onnx.load(str(path))
    if proto.ir_version > 10:                   # onnxruntime reads up to this IR version
        proto.ir_version = 10
        onnx.save(proto, str(path))
    return path
