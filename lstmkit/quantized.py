"""Dynamic quantization of lstmkit's recurrent modules and cells.

Importing lstmkit registers its classes with torch's dynamic quantization, so the
tutorial's own call quantizes lstmkit layers::

    torch.ao.quantization.quantize_dynamic(model, {lstmkit.LSTM, nn.Linear}, dtype=torch.qint8)

(or ``lstmkit.quantize_dynamic(model)``, which names every lstmkit class for you). What a
layer becomes:

* a plain ``LSTM`` or ``GRU`` (a configuration torch.nn has, no regularisers) becomes
  torch's own dynamically quantized module (``torch.ao.nn.quantized.dynamic.LSTM``/``GRU``):
  int8 weights, activations quantized on the fly by fbgemm, exactly torch's numbers and speed;
* every other module and cell — peepholes, projections (which torch's quantized LSTM lacks,
  pytorch/pytorch#60008), layer norm, the Greff ablations, RNN, Clockwork, Depth-Gated,
  the 1997 LSTM, the cells — becomes a :class:`DynamicQuantized` wrapper: its weight
  matrices stored as int8 with one scale per output row (or as float16 with
  ``dtype=torch.float16``), dequantized at each call, and the float module's own forward run
  on them. Activations stay float, so the only error is the weights' rounding; the file
  shrinks about fourfold; the speed is the float module's.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

_DTYPES = (torch.qint8, torch.float16)


def _quantize(w: Tensor, dtype: torch.dtype) -> Tensor:
    """int8 per output row, symmetric (zero point 0), scale max|w_row| / 127; or float16."""
    if dtype == torch.float16:
        return w.detach().to(torch.float16)
    w = w.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    zeros = torch.zeros(w.shape[0], dtype=torch.int64)
    return torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)


class DynamicQuantized(nn.Module):
    """An lstmkit recurrent module or cell with its weight matrices stored as int8 (or
    float16) and dequantized at each call; everything else (biases, peepholes, gains) stays
    as it was. Called exactly as the float module."""

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.qint8) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"DynamicQuantized: dtype must be torch.qint8 or torch.float16, "
                             f"got {dtype}")
        inner = copy.deepcopy(module)
        float_dtype = next(inner.parameters()).dtype
        self.names = [name for name, p in inner.named_parameters(recurse=False) if p.dim() == 2]
        for name in self.names:
            w = inner._parameters.pop(name)
            self.register_buffer(f"q_{name}", _quantize(w, dtype))
        self.inner, self.dtype, self.float_dtype = inner, dtype, float_dtype

    def forward(self, *args, **kwargs):
        for name in self.names:
            q = getattr(self, f"q_{name}")
            w = q.dequantize() if q.is_quantized else q
            setattr(self.inner, name, w.to(self.float_dtype))
        try:
            return self.inner(*args, **kwargs)
        finally:
            for name in self.names:                  # keep no float copy in the module
                delattr(self.inner, name)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False):
        """torch's conversion hook (``quantize_dynamic``): torch's own quantized LSTM/GRU for
        a plain configuration, else this wrapper."""
        qconfig = getattr(mod, "qconfig", None)
        dtype = qconfig.weight().dtype if qconfig is not None else torch.qint8
        if dtype not in _DTYPES:
            raise RuntimeError(f"lstmkit: unsupported dtype for dynamic quantization: {dtype} "
                               f"(torch.qint8 or torch.float16)")
        torch_twin = _plain_torch_twin(mod)
        if torch_twin is not None:
            from torch.ao.nn.quantized import dynamic as nnqd
            # torch's converter checks ``type(mod) in {torch.nn.LSTM, torch.nn.GRU}`` at call
            # time; code that aliased torch.nn.LSTM to lstmkit.LSTM passes our module itself
            # (it has torch.nn's attributes and weight names)
            source = mod if type(mod) in (torch.nn.LSTM, torch.nn.GRU) else torch_twin
            source.qconfig = qconfig
            qclass = nnqd.LSTM if mod.mode == "LSTM" else nnqd.GRU
            return qclass.from_float(source)
        return cls(mod, dtype)


def _plain_torch_twin(mod: nn.Module) -> nn.Module | None:
    """torch.nn's LSTM/GRU with these weights, for a configuration torch's quantized modules
    have (no projection, no variant, no regulariser), else None."""
    from .nn.base import RecurrentBase
    if not isinstance(mod, RecurrentBase) or mod.mode not in ("LSTM", "GRU") or mod.proj_size:
        return None
    if mod.regularization.active or type(mod).__name__ not in ("LSTM", "GRU"):
        return None
    try:
        return mod.to_torch()
    except ValueError:                               # a variant: no torch.nn twin
        return None


def quantize_dynamic(model: nn.Module, dtype: torch.dtype = torch.qint8,
                     extra: set | None = None, inplace: bool = False) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` with every lstmkit class and ``nn.Linear``
    (plus ``extra`` types) quantized."""
    spec = {*_lstmkit_classes(), nn.Linear, *(extra or ())}
    return torch.ao.quantization.quantize_dynamic(model, spec, dtype=dtype, inplace=inplace)


def _lstmkit_classes() -> list[type]:
    import lstmkit
    return [lstmkit.LSTM, lstmkit.GRU, lstmkit.RNN, lstmkit.ClockworkRNN,
            lstmkit.DepthGatedLSTM, lstmkit.LSTM1997, lstmkit.MUT, lstmkit.LSTMCell,
            lstmkit.GRUCell, lstmkit.RNNCell]


def register() -> None:
    """Map every lstmkit class to :meth:`DynamicQuantized.from_float` in torch's default
    dynamic-quantization mappings (done when lstmkit is imported)."""
    from torch.ao.quantization import quantization_mappings as qm
    for cls in _lstmkit_classes():
        qm.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS[cls] = DynamicQuantized
