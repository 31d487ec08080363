"""Recycled buffers for the fused path: the per-call tensors that never leave it.

A training call of a fused layer allocates large per-row buffers that only the layer itself
ever reads. These are the input projection ``a`` (which the loop overwrites with the gate
activations), the family's saved buffers (the LN-LSTM's x̂ and ĥ, the GRU's ``W_hn h``), and,
in backward, one time chunk's gate gradients ``dA`` and the family's gradient buffers. They
are freed with the graph, and on the CPU glibc then returns the pages to the kernel (a
39 MB buffer is always a fresh mapping). The next call faults them in again and has them
cleared. Measured in one process on the Xeon (2 threads, training steps of
``(output · g).sum()``, docs/performance.md), recycling these buffers made a step
0.94–0.96× as long for the LN-LSTM at (100,16,128), 0.89× at (150,64,256), 0.96× for the
LSTM at (100,16,128) and the GRU at (150,64,256).

So while :func:`recycling` is on, :func:`empty` hands out memory that an earlier call
allocated and that nothing uses any more, instead of a new buffer. It takes the smallest
free buffer of the same dtype that holds the request and is at most :data:`FIT` times its
size. The tensor it returns is a new contiguous tensor on that memory, not a view. "Nothing
uses it" is checked when the memory is handed out, not promised by the caller: the cache's
reference to the buffer must be the only one left. There may be no tensor on its memory, no
other Python reference, no autograd graph that saved it, no storage object of it held
elsewhere (a ``saved_tensors_hooks`` pack hook may keep one), and no other process sharing
it (``share_memory_``). So a graph kept for a second backward (``retain_graph=True``), a
trace's views, or a second forward between a forward and its backward all keep their
buffers. Those buffers are recycled only once they are free.

Only plain CPU tensors outside inference mode are recycled. A FakeTensor under
``torch.compile``, a functorch wrapper or an inference tensor gets a new buffer. Only what
the fused path allocates itself under :func:`recycling` is recycled, and never what it
returns with a gradient: its outputs and gradients are new tensors (the RNN's input
projection, which is also its output, is made with recycling off).

The cache holds at most :func:`limit` bytes (``LSTMKIT_BUFFER_CACHE_MB``, default 256 MiB;
0 turns it off). Beyond that it drops the least recently used free buffers. A buffer that
still does not fit is allocated as usual, outside the cache. A limit lowered while buffers
are in use is met at the first request after they are free. A graph kept alive holds its
buffers, which can be up to :data:`FIT` times the size it asked for. When a new buffer is made, the
free ones of its dtype that are too small for it are dropped first. A backward's first time
chunk is its shortest, so those buffers' memory goes back to the allocator for the larger
request, and the peak stays that of no cache at all.

Between calls the cache keeps the free buffers: about one call's worth per layer
(:func:`cached_bytes`). :func:`clear` frees them. ``lstmkit bench`` clears the cache before
it measures a step's peak memory, so that the step's own buffers are counted.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_LIMIT_MB = 256

_lock = threading.Lock()
_state = threading.local()
# the cached buffers, flat, least recently handed out first, by id; and each one's dtype,
# number of elements and bytes
_buffers: OrderedDict[int, Tensor] = OrderedDict()
_meta: dict[int, tuple[torch.dtype, int, int]] = {}
_bytes = [0]
# a free buffer serves a request of at least 1/FIT of its size (a 1,600-row chunk's buffer
# serves the next chunk of 560 rows, not a step of 16)
FIT = 2
# smaller buffers are not recycled: the allocator serves them from memory it keeps, and
# the cache's own cost (a few µs a buffer) would show at small sizes (from 256 KiB up, the
# RNN's chunk buffers at (100,16,128): a step 1.02–1.03× as long; from 1 MiB up 1.01×)
MIN_BYTES = 1 << 20


def _limit_from_env() -> int:
    raw = os.environ.get("LSTMKIT_BUFFER_CACHE_MB")
    if raw is None or raw.strip() == "":
        return DEFAULT_LIMIT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"LSTMKIT_BUFFER_CACHE_MB must be a number of MiB (0 turns the "
                         f"buffer cache off), got {raw!r}") from None
    if not math.isfinite(mb) or mb < 0:
        raise ValueError(f"LSTMKIT_BUFFER_CACHE_MB must be a finite number ≥ 0, got {raw!r}")
    return int(mb * (1 << 20))


_limit = [_limit_from_env()]
# torch's count of the references to a tensor's memory; without it nothing is recycled
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def limit() -> int:
    """The most bytes the cache holds."""
    return _limit[0]


def set_limit(nbytes: int) -> None:
    """Hold at most ``nbytes`` (0: recycle nothing); drops free buffers beyond it."""
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"the buffer cache's limit must be an int ≥ 0 (bytes), got {nbytes!r}")
    with _lock:
        _limit[0] = nbytes
        _evict(nbytes)


def cached_bytes() -> int:
    """Bytes of the buffers the cache holds (free or in use)."""
    return _bytes[0]


def clear() -> None:
    """Forget every buffer (those in use stay with their users and are freed with them)."""
    with _lock:
        _buffers.clear()
        _meta.clear()
        _bytes[0] = 0


class recycling:
    """:func:`empty` recycles in this block (on this thread) when ``on``. (A class, not a
    generator: it is entered twice per layer call, and at B = 1 every µs shows.)"""

    __slots__ = ("on", "saved")

    def __init__(self, on: bool = True):
        self.on = on

    def __enter__(self) -> None:
        self.saved = getattr(_state, "on", False)
        _state.on = self.on

    def __exit__(self, *exc) -> None:
        _state.on = self.saved


def _recyclable(like: Tensor) -> bool:
    if _limit[0] == 0 or _use_count is None:
        return False
    if type(like) is not torch.Tensor or like.device.type != "cpu":
        return False
    if torch.is_inference_mode_enabled() or like.is_inference():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(like)


def _counts(t: Tensor) -> tuple[int, int, int, bool]:
    """(Python references to ``t``; references to its memory; Python references to its
    storage object, which torch keeps and hands out again while one is alive, so a holder of
    ``t.untyped_storage()`` adds no reference to the memory; whether that memory is shared
    with other processes, who are not counted)."""
    storage = t.untyped_storage()
    return (sys.getrefcount(t), _use_count(storage._cdata), sys.getrefcount(storage),
            storage.is_shared())


def _calibrate() -> tuple[int, int, int, bool]:
    """:func:`_counts` of a tensor that only a dict and one local variable hold, as the
    cache's buffers are when :func:`_free` looks at them (the counts include the call's own
    references, which depend on the Python version)."""
    if _use_count is None:
        return (-1, -1, -1, False)
    held = {0: torch.empty(0)}
    t = held[0]
    return _counts(t)


_FREE_COUNTS = _calibrate()


def _free(buffers: OrderedDict[int, Tensor], i: int) -> bool:
    """Whether the cache's reference is the only one left to ``buffers[i]`` and to its
    memory: no tensor handed out on it is alive (each is a tensor of its own on the
    buffer's memory, not a view, so that it can be returned as a differentiable output),
    no storage object of it is held (e.g. by a ``saved_tensors_hooks`` pack hook), it is not
    shared with another process, nor is there any other reference."""
    t = buffers[i]
    return _counts(t) == _FREE_COUNTS


def _on(base: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A new contiguous tensor of ``shape`` on the first elements of ``base``'s memory."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return base.new_empty(0).set_(base.untyped_storage(), 0, shape, tuple(reversed(strides)))


def empty(shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device: on
    a free buffer of the cache while :func:`recycling` is on (the smallest that holds it and
    is at most :data:`FIT` times its size; from :data:`MIN_BYTES` up), else new."""
    shape = tuple(shape)
    if not getattr(_state, "on", False):
        return like.new_empty(shape)
    if _bytes[0] > _limit[0]:              # the limit was lowered while buffers were in use
        with _lock:
            _evict(_limit[0])
    numel = math.prod(shape)
    if numel * like.element_size() < MIN_BYTES or not _recyclable(like):
        return like.new_empty(shape)
    dtype = like.dtype
    with _lock:
        best, best_n = None, 0
        for i, (dt, n, _) in _meta.items():
            if dt == dtype and numel <= n <= FIT * numel and (best is None or n < best_n) \
                    and _free(_buffers, i):
                best, best_n = i, n
        if best is not None:
            _buffers.move_to_end(best)
            return _on(_buffers[best], shape)
        nbytes = numel * like.element_size()
        if nbytes > _limit[0]:
            return like.new_empty(shape)                    # never fits: not kept
        # a new buffer: the free ones too small for it go (the memory they hold is the
        # first a larger request can use; a backward's first time chunk is its shortest)
        for i, (dt, n, _) in list(_meta.items()):
            if dt == dtype and n < numel and _free(_buffers, i):
                _drop(i)
        if _bytes[0] + nbytes > _limit[0]:
            _evict(_limit[0] - nbytes)
            if _bytes[0] + nbytes > _limit[0]:
                return like.new_empty(shape)                # does not fit: not kept
        base = like.new_empty(numel)
        _buffers[id(base)] = base
        _meta[id(base)] = (dtype, numel, nbytes)
        _bytes[0] += nbytes
        return _on(base, shape)


def _drop(i: int) -> None:
    _bytes[0] -= _meta.pop(i)[2]
    del _buffers[i]


def _evict(target: int) -> None:
    """Drop free buffers, least recently handed out first, until at most ``target`` bytes
    are held (or no free buffer is left). Called with the lock held."""
    for i in list(_buffers):
        if _bytes[0] <= target:
            return
        if _free(_buffers, i):
            _drop(i)
