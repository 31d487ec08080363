r"""oneDNN's RNN primitives as a layer loop: the optional backend ``"onednn"``.

oneDNN (Apache-2.0) ships forward and backward RNN primitives for the LSTM (with
peepholes and projection), the GRU with the reset gate applied after the recurrent
product ("linear before reset", ``lbr_gru``) and the tanh/relu RNN. torch uses its own
internal copy of oneDNN only for the plain float32 LSTM; this backend links the maintained
wheels ``onednn-cpu-gomp`` + ``onednn-devel-cpu-gomp`` (``pip install 'lstmkit[onednn]'``)
and runs every configuration above through them, one primitive call per layer and
direction (``csrc/onednn_rnn.cpp``, built on first use like the engine, by
:mod:`lstmkit.ops.extension`).

What it computes is the function of lstmkit's cells (the same equations; oneDNN's
formulas, from its developer guide "RNN" page):

* LSTM, gates i, f, c̃, o = torch's i, f, g, o; peepholes ``P`` (3, H) in the order i, f,
  o, the input and forget gates on c_{t-1}, the output gate on c_t (as lstmkit's
  ``peephole`` vector); projection h_t = W_hr (o_t ⊙ tanh c_t); one bias b_ih + b_hh.
* LBR-GRU, gates u, r, o = torch's z, r, n, so the first two row blocks of W_ih and W_hh
  swap; four bias blocks: b_u = b_iz + b_hz, b_r = b_ir + b_hr, b_o = b_in (outside r ⊙ ·)
  and b_u' = b_hn (inside ``r ⊙ (W_hn h + b_hn)``).
* vanilla RNN, h_t = act(W_ih x_t + W_hh h_{t-1} + b_ih + b_hh), act tanh or relu.

The weights stay in lstmkit's (torch's) parameter layout; the permutations above happen in
:func:`to_onednn` and their inverses in :func:`from_onednn`, inside one
``torch.autograd.Function`` per layer call, which returns the gradients of the input, the
initial states and every weight and bias. Without gradients (``torch.no_grad()``, or no
input requiring one) the layer runs oneDNN's ``forward_inference`` and keeps nothing.

Where it runs: CPU float32, padded input (every sequence of the batch the full length: the
primitive has no per-sequence lengths), not recording gates, no recurrent masks (recurrent
dropout, zoneout), and a cell that declares ``CellSpec.onednn``. An explicit
``backend="onednn"`` raises :class:`OneDNNUnavailable` naming what is missing or which
condition fails; ``backend="auto"`` uses it only where it measured faster than auto's
other choice without holding more memory than torch.nn (:data:`AUTO_MIN_BH`,
``benchmarks/onednn_bench.py``: in training the plain LSTM from B·H = 4096, under
``torch.no_grad()`` every kind from B·H = 1024) and otherwise runs as without it.
``LSTMKIT_NO_ONEDNN=1`` keeps ``auto`` from using it.

Coexistence with torch in one process (see docs/onednn.md): torch links its own oneDNN
statically and exports none of oneDNN's C API, and its libraries are loaded privately
(``RTLD_LOCAL``), so our ``libdnnl.so.3`` binds every one of its symbols to itself; the
only exported names both define are C++ template instances (``std::`` containers, and the
``std::future`` results of oneDNN's caches), which resolve within each library. Both link
GNU OpenMP under the soname ``libgomp.so.1``: the loader maps it once (torch's copy), so
one thread pool serves both and ``torch.set_num_threads`` sets oneDNN's thread count too.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
from functools import cache
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import Function

from ..cells.base import CellSpec, LayerWeights, State
from .extension import BuildOptions, ExtensionUnavailable, cpp_module

LIBRARY = "onednn-cpu-gomp"           # libdnnl.so.3
HEADERS = "onednn-devel-cpu-gomp"     # oneapi/dnnl/*.hpp
EXTENSION = "onednn_rnn"
ENV_DISABLE_AUTO = "LSTMKIT_NO_ONEDNN"
INSTALL_HINT = ("pip install 'lstmkit[onednn]' (the wheels onednn-cpu-gomp and "
                "onednn-devel-cpu-gomp)")

KINDS = {"lstm": 0, "lbr_gru": 1, "rnn_tanh": 2, "rnn_relu": 3}

#: ``backend="auto"`` runs a layer here when its batch × hidden size B·H is at least
#: ``AUTO_MIN_BH[mode][kind]`` (``None``: never in that mode). "train": grad mode on
#: (``forward_training`` and oneDNN's backward); "infer": under ``torch.no_grad()``.
#: Set from two-thread runs on quiet machines (``benchmarks/onednn_bench.py``, which records
#: time and peak memory; docs/onednn.md, "How auto chooses"):
#:
#: * training: only the plain LSTM, from B·H = 4096, where oneDNN's primitive ties with or
#:   beats torch's own oneDNN kernel (0.90–1.01× of it; below, 1.07–1.10×). For the GRU, the
#:   RNN, the projection and the peephole LSTM the C++ engine is as fast or faster (oneDNN
#:   took 1.03–1.40× its time for the GRU, 1.05–1.35× for the RNN, 0.88–1.11× for the
#:   projection, 0.93–1.17× with peepholes, on 2026-12-03) and oneDNN's training workspace
#:   holds 2.0–2.2× torch.nn's peak memory (GRU), 3.6–3.9× (RNN), 1.8–1.9× (projection),
#:   where the engine holds 0.7–0.9× (GRU, projection) and 1.07–1.16× (RNN);
#: * inference keeps nothing, and oneDNN's forward is the faster one from B·H = 1024 (0.57–
#:   0.96× of the engine's time, 0.73–1.04× for the RNN); at B = 1, (50, 1, 64), it took
#:   1.04–1.72× (per-call costs).
AUTO_MIN_BH: dict[str, dict[str, int | None]] = {
    "train": {"lstm": 4096, "lstm_peephole": None, "lstm_proj": None, "lbr_gru": None,
              "rnn_tanh": None, "rnn_relu": None},
    "infer": {"lstm": 1024, "lstm_peephole": 1024, "lstm_proj": 1024, "lbr_gru": 1024,
              "rnn_tanh": 1024, "rnn_relu": 1024},
}


class OneDNNUnavailable(ValueError):
    """``backend="onednn"`` cannot run this layer (the message says why)."""


# -- finding the wheel -----------------------------------------------------------------------
@cache
def _install() -> tuple[Path, Path, str] | str:
    """(library file, include folder, version) of the installed wheels, found from their
    installed files (``importlib.metadata``), or the reason they cannot be used."""
    try:
        lib_dist, inc_dist = metadata.distribution(LIBRARY), metadata.distribution(HEADERS)
    except metadata.PackageNotFoundError as e:
        return f"the wheel {e.args[0] if e.args else LIBRARY} is not installed; {INSTALL_HINT}"
    lib = _located(lib_dist, lambda p: p.name.startswith("libdnnl.so."))
    header = _located(inc_dist, lambda p: p.as_posix().endswith("oneapi/dnnl/dnnl.hpp"))
    if lib is None or header is None:
        missing = "libdnnl.so.*" if lib is None else "oneapi/dnnl/dnnl.hpp"
        return (f"the installed {LIBRARY}/{HEADERS} wheels have no {missing} (a damaged or "
                f"non-Linux install); reinstall with {INSTALL_HINT}")
    if lib_dist.version != inc_dist.version:
        return (f"{LIBRARY} {lib_dist.version} and {HEADERS} {inc_dist.version} differ; "
                "install the same version of both")
    return lib, header.parents[2], lib_dist.version


def _located(dist: metadata.Distribution, match) -> Path | None:
    """The shortest-named installed file of ``dist`` that ``match`` accepts (for the
    library: ``libdnnl.so.3``, the soname, rather than ``libdnnl.so.3.2``)."""
    found = sorted((Path(dist.locate_file(f)) for f in dist.files or () if match(Path(f))),
                   key=lambda p: len(p.name))
    found = [p for p in found if p.exists()]
    return found[0].resolve().parent / found[0].name if found else None


def build_options() -> BuildOptions:
    lib, include, version = _install()          # type: ignore[misc]
    return BuildOptions(include_paths=(str(include),),
                        ldflags=(str(lib), f"-Wl,-rpath,{lib.parent}"),
                        key=f"{LIBRARY} {version} at {lib}",
                        fallback="backend='onednn' is unavailable")


def unavailable_reason() -> str | None:
    """Why the backend cannot run at all (wheel missing, extension not buildable), or None.
    Builds the extension on first call when the wheel is installed."""
    found = _install()
    if isinstance(found, str):
        return found
    try:
        cpp_module(EXTENSION, required=True, options=build_options())
    except ExtensionUnavailable as e:
        return str(e)
    return None


def installed() -> bool:
    """The wheels are installed (cheap: does not build anything)."""
    return not isinstance(_install(), str)


_loaded: list[ModuleType] = []          # the extension, once built and loaded


def module() -> ModuleType:
    """The compiled extension (raising :class:`OneDNNUnavailable` if it cannot be had)."""
    if _loaded:
        return _loaded[0]
    reason = unavailable_reason()
    if reason is not None:
        raise OneDNNUnavailable(f"backend='onednn' is unavailable: {reason}")
    _loaded.append(cpp_module(EXTENSION, required=True, options=build_options()))
    return _loaded[0]


def version() -> str:
    """oneDNN's version as the loaded library reports it."""
    return module().version()


# -- where it runs ---------------------------------------------------------------------------
def unsupported(cell: CellSpec, x: Tensor, batch_sizes: list[int], *, recording: bool = False,
                masked: bool = False) -> str | None:
    """Why oneDNN cannot compute this layer call, or None if it can (not counting whether
    the wheel is installed: :func:`unavailable_reason`)."""
    if cell.onednn is None:
        options = ", ".join(f"{k}={v!r}" for k, v in cell.options if v not in (None, False))
        return (f"the {cell.family} cell{f' with {options}' if options else ''} has no oneDNN "
                "primitive (oneDNN computes the LSTM, also with peepholes and proj_size, the "
                "GRU with reset_after=True and the tanh/relu RNN)")
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return f"oneDNN's RNN runs on CPU float32 tensors, got {x.dtype} on {x.device}"
    if batch_sizes[0] != batch_sizes[-1]:
        return ("oneDNN's RNN takes padded input (every sequence the full length), got a "
                "PackedSequence of different lengths")
    if recording:
        return "oneDNN's RNN cannot record the gates of every step"
    if masked:
        return ("oneDNN's RNN has no recurrent masks (recurrent dropout, zoneout); use "
                "backend='auto' or 'fused'")
    return None


def require(cell: CellSpec, x: Tensor, batch_sizes: list[int], *, recording: bool = False,
            masked: bool = False) -> None:
    """Raise :class:`OneDNNUnavailable` unless ``backend="onednn"`` can run this call."""
    if torch.jit.is_tracing():
        reason = "a torch.jit.trace cannot record it; trace with backend='auto'"
    else:
        reason = unsupported(cell, x, batch_sizes, recording=recording, masked=masked)
    if reason is not None:
        raise OneDNNUnavailable(f"backend='onednn' cannot run this layer: {reason}")
    module()


def preferred(cell: CellSpec, x: Tensor, batch_sizes: list[int], *, hidden: int | None,
              projected: bool = False, recording: bool = False, masked: bool = False) -> bool:
    """``backend="auto"`` runs this call with oneDNN: a call it can take, of a size where
    it measured faster (:data:`AUTO_MIN_BH`; ``hidden`` None: unknown, no), the wheel
    installed and the extension built, not disabled by ``LSTMKIT_NO_ONEDNN``."""
    if cell.onednn is None or hidden is None or _env_disabled():
        return False
    if cell.onednn == "lstm":
        kind = "lstm_proj" if projected else "lstm" if cell.native else "lstm_peephole"
    else:
        kind = cell.onednn
    least = AUTO_MIN_BH["train" if torch.is_grad_enabled() else "infer"][kind]
    if least is None or batch_sizes[0] * hidden < least:
        return False
    return (unsupported(cell, x, batch_sizes, recording=recording, masked=masked) is None
            and installed() and _built())


def _env_disabled() -> bool:
    return os.environ.get(ENV_DISABLE_AUTO, "").strip().lower() not in ("", "0", "false", "no")


def _built() -> bool:
    """The extension is built (building it once; a failed build warns once and is
    remembered, and ``auto`` then runs as without the wheel)."""
    return bool(_loaded) or cpp_module(EXTENSION, required=False,
                                       options=build_options()) is not None


# -- layouts ---------------------------------------------------------------------------------
def _gru_rows(t: Tensor, H: int) -> Tensor:
    """torch's r, z, n blocks as oneDNN's u (= z), r, o (= n), and back (a swap)."""
    return torch.cat([t[H:2 * H], t[:H], t[2 * H:]])


def to_onednn(kind: str, w: LayerWeights, H: int) -> tuple[Tensor, Tensor, Tensor]:
    """W_ih, W_hh and the bias in oneDNN's gate order and bias layout (see the module
    docstring); without biases, zeros."""
    if kind == "lbr_gru":
        w_layer, w_iter = _gru_rows(w.w_ih, H), _gru_rows(w.w_hh, H)
        if w.b_ih is None:
            return w_layer, w_iter, w.w_ih.new_zeros(4 * H)
        b_i, b_h = _gru_rows(w.b_ih, H), _gru_rows(w.b_hh, H)
        return w_layer, w_iter, torch.cat([b_i[:2 * H] + b_h[:2 * H], b_i[2 * H:], b_h[2 * H:]])
    bias = w.w_ih.new_zeros(w.w_ih.shape[0]) if w.b_ih is None else w.b_ih + w.b_hh
    return w.w_ih.contiguous(), w.w_hh.contiguous(), bias


def from_onednn(kind: str, dw_layer: Tensor, dw_iter: Tensor, dbias: Tensor, H: int
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients of W_ih, W_hh, b_ih and b_hh from those of :func:`to_onednn`'s outputs."""
    if kind == "lbr_gru":
        db = dbias.view(4, H)
        return (_gru_rows(dw_layer, H), _gru_rows(dw_iter, H),
                torch.cat([db[1], db[0], db[2]]), torch.cat([db[1], db[0], db[3]]))
    return dw_layer, dw_iter, dbias, dbias.clone()


def _none_empty(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t.contiguous()


# -- the layer -------------------------------------------------------------------------------
def run_layer(cell: CellSpec, x: Tensor, batch_sizes: list[int], state0: State,
              w: LayerWeights, *, reverse: bool = False, record: bool = False,
              masks=None, side: tuple[Tensor, ...] = (), sequences: bool = False) -> tuple:
    """One layer and direction by oneDNN, with the signature of
    :func:`lstmkit.ops.reference.run_layer` (padded input: ``batch_sizes`` all equal)."""
    masked = masks is not None and any(m is not None for m in masks)
    reason = unsupported(cell, x, batch_sizes, recording=record, masked=masked)
    if reason is None and (side or sequences):
        reason = "the layer has side inputs or links its states to the next layer"
    if reason is not None:
        raise OneDNNUnavailable(f"backend='onednn' cannot run this layer: {reason}")
    T, B = len(batch_sizes), batch_sizes[0]
    seq = x.contiguous().view(T, B, x.shape[1])
    lstm = cell.onednn == "lstm"
    h0 = state0[0].contiguous()
    c0 = state0[1].contiguous() if lstm else seq.new_empty(0)
    inputs = (seq, h0, c0, w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr, w.peephole)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        y, h_n, c_n = OneDNNFunction.apply(cell, reverse, *inputs)
    else:
        y, h_n, c_n = _forward(cell.onednn, reverse, False, *inputs)[:3]
    finals = (h_n, c_n) if lstm else (h_n,)
    return y.view(T * B, y.shape[-1]), finals, None


def _forward(kind: str, reverse: bool, training: bool, seq, h0, c0, w_ih, w_hh, b_ih, b_hh,
             w_hr, peephole) -> list[Tensor]:
    H = w_hh.shape[0] // (4 if kind == "lstm" else 3 if kind == "lbr_gru" else 1)
    w_layer, w_iter, bias = to_onednn(kind, LayerWeights(w_ih, w_hh, b_ih, b_hh), H)
    return module().forward(KINDS[kind], reverse, training, seq, h0, c0, w_layer, w_iter,
                            bias, _none_empty(peephole, seq), _none_empty(w_hr, seq))


class OneDNNFunction(Function):
    """One layer and direction: oneDNN's ``forward_training`` (keeping its workspace) and
    ``backward``, with the gradients mapped back to lstmkit's parameter layout."""

    @staticmethod
    def forward(ctx, cell: CellSpec, reverse: bool, seq, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                peephole):
        y, h_n, c_n, workspace = _forward(cell.onednn, reverse, True, seq, h0, c0, w_ih, w_hh,
                                          b_ih, b_hh, w_hr, peephole)
        ctx.cell, ctx.reverse = cell, reverse
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(seq, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peephole, y, h_n, c_n,
                              workspace)
        if cell.onednn != "lstm":
            ctx.mark_non_differentiable(c_n)
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        saved = ctx.saved_tensors
        inputs, (y, h_n, c_n, workspace) = saved[:9], saved[9:]
        if torch.is_grad_enabled():             # create_graph=True: differentiable gradients
            return (None, None, *_reference_grads(ctx.cell, ctx.reverse, inputs,
                                                  (dy, dh_n, dc_n), ctx.needs_input_grad[2:]))
        return (None, None, *_backward(ctx.cell.onednn, ctx.reverse, inputs, y, h_n, c_n,
                                       workspace, dy, dh_n, dc_n, ctx.needs_input_grad[2:]))


def _backward(kind: str, reverse: bool, inputs, y, h_n, c_n, workspace, dy, dh_n, dc_n,
              needs) -> list[Tensor | None]:
    seq, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peephole = inputs
    H = c0.shape[1] if kind == "lstm" else h0.shape[1]
    w_layer, w_iter, bias = to_onednn(kind, LayerWeights(w_ih, w_hh, b_ih, b_hh), H)
    dy = torch.zeros_like(y) if dy is None else dy.contiguous()
    dh_n = torch.zeros_like(h_n) if dh_n is None else dh_n.contiguous()
    dc_n = (torch.zeros_like(c_n) if dc_n is None else dc_n.contiguous()) if kind == "lstm" \
        else c_n
    dx, dh0, dc0, dwl, dwi, dbias, dpeep, dproj = module().backward(
        KINDS[kind], reverse, seq, h0, c0, w_layer, w_iter, bias, _none_empty(peephole, seq),
        _none_empty(w_hr, seq), y, h_n, c_n, workspace, dy, dh_n, dc_n)
    dw_ih, dw_hh, db_ih, db_hh = from_onednn(kind, dwl, dwi, dbias, H)
    grads = [dx, dh0, dc0 if kind == "lstm" else None, dw_ih, dw_hh,
             None if b_ih is None else db_ih, None if b_hh is None else db_hh,
             None if w_hr is None else dproj, None if peephole is None else dpeep]
    return [g if need else None for g, need in zip(grads, needs)]


def _reference_grads(cell: CellSpec, reverse: bool, inputs, grad_outputs, needs) -> list:
    """The gradients by differentiating the reference loop over the same inputs, connected
    to the graph: for ``create_graph=True`` (double backward), which oneDNN's backward
    cannot give."""
    from . import reference
    seq, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peephole = inputs
    T, B = seq.shape[:2]
    lstm = cell.onednn == "lstm"
    with torch.enable_grad():
        y, finals, _ = reference.run_layer(
            cell, seq.reshape(T * B, -1), [B] * T, (h0, c0) if lstm else (h0,),
            LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr, peephole), reverse=reverse)
        outs, gouts = [], []
        for out, g in zip((y.view(T, B, -1), *finals), grad_outputs):
            if g is not None and out.requires_grad:
                outs.append(out)
                gouts.append(g)
        wanted = [i for i, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
        grads = (torch.autograd.grad(outs, [inputs[i] for i in wanted], gouts,
                                     create_graph=True, allow_unused=True)
                 if outs and wanted else [None] * len(wanted))
    result: list = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return result


__all__ = ["OneDNNFunction", "OneDNNUnavailable", "from_onednn", "preferred", "require",
           "run_layer", "to_onednn", "unavailable_reason", "unsupported"]
