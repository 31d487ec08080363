"""Greff et al. (2015), §III: the eight variants, each one change to their "vanilla" LSTM
(which has peepholes), by name, as keywords of :class:`lstmkit.LSTM`; for
``lstmkit train --variant`` and the ``lstm-<name>`` cells of ``lstmkit experiment``."""

from __future__ import annotations

GREFF_VARIANTS: dict[str, dict[str, object]] = {
    "vanilla": {"peephole": True},
    "nig": {"peephole": True, "input_gate": False},
    "nfg": {"peephole": True, "forget_gate": False},
    "nog": {"peephole": True, "output_gate": False},
    "niaf": {"peephole": True, "input_activation": None},
    "noaf": {"peephole": True, "cell_activation": None},
    "np": {},
    "cifg": {"peephole": True, "coupled": True},
    "fgr": {"peephole": True, "gate_recurrence": True},
}
