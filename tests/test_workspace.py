"""The fused path's buffer cache (lstmkit.ops.workspace): a buffer is handed out again only
when nothing holds it any more.

Outside reference: the reference backend (autograd through the equations) in float64. The
dangerous case is a buffer recycled while a graph still needs it: two forwards of the same
shapes before their backwards, a graph kept for a second backward, a view of a buffer. Each
must give the reference's gradients; they would not if a second forward wrote its
activations into the first one's saved buffers.
"""

from __future__ import annotations

import gc

import pytest
import torch
from helpers import TOL, assert_close
from torch._subclasses.fake_tensor import FakeTensorMode

import lstmkit
from lstmkit.ops import workspace

T, B, I, H = 6, 3, 4, 5

MODULES = {
    "lstm": lambda backend: lstmkit.LSTM(I, H, backend=backend),
    "layer_norm": lambda backend: lstmkit.LSTM(I, H, layer_norm=True, backend=backend),
    "proj": lambda backend: lstmkit.LSTM(I, H, proj_size=3, backend=backend),
    "gru": lambda backend: lstmkit.GRU(I, H, backend=backend),
    "rnn": lambda backend: lstmkit.RNN(I, H, backend=backend),
    "ln_gru": lambda backend: lstmkit.GRU(I, H, layer_norm=True, backend=backend),
}


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """An empty cache that recycles buffers of any size (these tests' layers are tiny)."""
    saved = workspace.limit()
    workspace.clear()
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    yield
    workspace.set_limit(saved)
    workspace.clear()


def twins(kind: str):
    torch.manual_seed(0)
    ours = MODULES[kind]("fused_cpp").double()
    ref = MODULES[kind]("reference").double()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def loss_of(module, x, seed):
    out = module(x)[0]
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return (out * g).sum()


def grads(module, x):
    return [x.grad.clone(), *(p.grad.clone() for p in module.parameters())]


def zero(module, x):
    x.grad = None
    for p in module.parameters():
        p.grad = None


def assert_all_close(actual, expected, what):
    for k, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert_close(a, e, f"{what} [{k}]", TOL[torch.float64])


# -- the rule -------------------------------------------------------------------------------
def test_a_buffer_is_handed_out_again_only_when_nothing_holds_it():
    like = torch.empty(1)
    with workspace.recycling():
        a = workspace.empty((7, 9), like)
        first = a.data_ptr()
        del a
        b = workspace.empty((7, 9), like)
        assert b.data_ptr() == first, "a free buffer is recycled"
        c = workspace.empty((7, 9), like)
        assert c.data_ptr() != b.data_ptr(), "a held buffer is not handed out twice"
        view, taken = c[2:], c.data_ptr()
        del c
        d = workspace.empty((7, 9), like)
        assert d.data_ptr() not in (first, taken), "a view keeps its buffer"
        other = workspace.empty((9, 7), like)
        assert other.data_ptr() not in (first, taken, d.data_ptr())
        assert workspace.empty((7, 9), like.double()).dtype == torch.float64
    del view
    with workspace.recycling():
        assert workspace.empty((7, 9), like).data_ptr() == taken, "freed with its last view"
    assert workspace.empty((7, 9), like).data_ptr() not in (first, taken), \
        "outside recycling() every buffer is new"


def test_small_buffers_are_not_recycled(monkeypatch):
    monkeypatch.setattr(workspace, "MIN_BYTES", 4096)
    like = torch.empty(1)
    with workspace.recycling():
        small = workspace.empty((32, 31), like)                 # 3,968 bytes
        big = workspace.empty((32, 32), like)                   # 4,096
    assert workspace.cached_bytes() == 4096
    assert small.untyped_storage().nbytes() == 3968 and big.untyped_storage().nbytes() == 4096


def test_a_buffer_saved_by_a_graph_is_not_handed_out():
    like = torch.empty(1)
    x = torch.randn(7, 9, requires_grad=True)
    with workspace.recycling():
        buf = workspace.empty((7, 9), like).copy_(torch.randn(7, 9))
    y = (x * buf).sum()                      # mul saves buf for x's gradient
    taken = buf.data_ptr()
    del buf
    with workspace.recycling():
        fresh = workspace.empty((7, 9), like)
    assert fresh.data_ptr() != taken
    del fresh
    y.backward()
    del y
    with workspace.recycling():
        assert workspace.empty((7, 9), like).data_ptr() == taken


def test_a_held_storage_object_keeps_its_buffer():
    """torch hands out the same Python storage object while one is alive, so holding it adds
    no reference to the memory; the cache must count the object's own references."""
    like = torch.empty(1)
    with workspace.recycling():
        t = workspace.empty((7, 9), like)
        taken, storage = t.data_ptr(), t.untyped_storage()
        del t
        fresh = workspace.empty((7, 9), like)
        assert fresh.data_ptr() != taken
        del fresh, storage
        assert workspace.empty((7, 9), like).data_ptr() == taken


def test_a_pack_hook_that_keeps_storages_gets_the_reference_gradients():
    """A saved_tensors_hooks pack hook may keep (storage, offset, size, stride) instead of
    the tensor; a second forward before the backward must not overwrite that memory."""
    ours, ref = twins("lstm")
    gen = torch.Generator().manual_seed(3)
    x1 = torch.randn(T, B, I, dtype=torch.float64, generator=gen, requires_grad=True)
    x2 = torch.randn(T, B, I, dtype=torch.float64, generator=gen)

    def pack(t):
        return t.untyped_storage(), t.storage_offset(), t.size(), t.stride(), t.dtype

    def unpack(p):
        return torch.empty(0, dtype=p[4]).set_(p[0], p[1], p[2], p[3])

    def grad_x(module):
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            loss = module(x1)[0].pow(2).sum()
        module(x2)
        return torch.autograd.grad(loss, x1)[0]
    assert_close(grad_x(ours), grad_x(ref), "dx", TOL[torch.float64])


def test_shared_memory_is_not_recycled():
    like = torch.empty(1)
    with workspace.recycling():
        t = workspace.empty((7, 9), like)
        t.share_memory_()
        taken = t.data_ptr()
        del t
        assert workspace.empty((7, 9), like).data_ptr() != taken


def test_a_lowered_limit_is_met_once_the_buffers_are_free():
    like = torch.empty(1)
    with workspace.recycling():
        held = workspace.empty((64, 64), like)
    assert workspace.cached_bytes() == 64 * 64 * 4
    workspace.set_limit(0)                     # the buffer is in use: it stays for now
    assert workspace.cached_bytes() == 64 * 64 * 4
    del held
    with workspace.recycling():
        workspace.empty((8, 8), like)          # the next request drops it
    assert workspace.cached_bytes() == 0
    workspace.set_limit(1000)
    with workspace.recycling():
        keep = workspace.empty((4, 4), like)
        big = workspace.empty((64, 64), like)  # larger than the limit: not kept, nothing
    assert workspace.cached_bytes() == 64 and big.numel() == 4096   # dropped for it
    del keep


def test_no_recycling_outside_plain_cpu_tensors():
    like = torch.empty(1)
    with workspace.recycling():
        with torch.inference_mode():
            assert not workspace._recyclable(torch.empty(1))
        with FakeTensorMode() as mode:
            fake = mode.from_tensor(like)
            assert not workspace._recyclable(fake)
            assert type(workspace.empty((2, 3), fake)) is not torch.Tensor
        assert workspace._recyclable(like)
    assert workspace.cached_bytes() == 0
    kept = workspace.empty((2, 3), like)                     # outside recycling(): new
    assert workspace.cached_bytes() == 0 and kept.shape == (2, 3)


# -- the fused layers on it -----------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_interleaved_graphs_keep_their_buffers(kind):
    ours, ref = twins(kind)
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randn(T, B, I, dtype=torch.float64, generator=gen, requires_grad=True)
    x2 = torch.randn(T, B, I, dtype=torch.float64, generator=gen, requires_grad=True)
    expected = {}
    for name, x in (("x1", x1), ("x2", x2)):
        loss_of(ref, x, seed=2).backward()
        expected[name] = grads(ref, x)
        zero(ref, x)
    # two forwards of the same shapes, then their backwards; a third forward while the
    # first graph is kept for a second backward
    loss1, loss2 = loss_of(ours, x1, seed=2), loss_of(ours, x2, seed=2)
    loss1.backward(retain_graph=True)
    assert_all_close(grads(ours, x1), expected["x1"], f"{kind}: first graph")
    zero(ours, x1)
    loss3 = loss_of(ours, x2, seed=2)
    loss1.backward()
    assert_all_close(grads(ours, x1), expected["x1"], f"{kind}: first graph, second backward")
    zero(ours, x1)
    loss2.backward()
    assert_all_close(grads(ours, x2), expected["x2"], f"{kind}: second graph")
    zero(ours, x2)
    loss3.backward()
    assert_all_close(grads(ours, x2), expected["x2"], f"{kind}: third graph")
    assert workspace.cached_bytes() > 0 or kind == "rnn"


@pytest.mark.parametrize("kind", ["lstm", "layer_norm", "gru"])
def test_steps_reuse_the_same_buffers(kind):
    ours, _ = twins(kind)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    loss_of(ours, x, seed=0).backward()
    held = workspace.cached_bytes()
    assert held > 0
    for _ in range(3):
        loss_of(ours, x, seed=0).backward()
        assert workspace.cached_bytes() == held, "a later step took new buffers"


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_the_cache_keeps_no_graph_alive(kind):
    ours, _ = twins(kind)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out, state = ours(x)
    assert all(t.grad_fn is None and not t.requires_grad and t.dim() == 1
               for t in workspace._buffers.values()), "an output stayed in the cache"
    assert workspace.cached_bytes() > 0 or kind == "rnn"
    del out, state
    gc.collect()
    # with the graph gone every cached buffer is free again (none kept by a graph that the
    # cache itself would keep alive)
    for i in list(workspace._buffers):
        assert workspace._free(workspace._buffers, i)


def test_limit_and_clear():
    ours, ref = twins("layer_norm")
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    workspace.set_limit(0)
    loss_of(ours, x, seed=0).backward()
    assert workspace.cached_bytes() == 0
    workspace.set_limit(600)
    zero(ours, x)
    loss_of(ours, x, seed=0).backward()
    assert 0 < workspace.cached_bytes() <= 600
    got = grads(ours, x)
    zero(ref, x)
    loss_of(ref, x, seed=0).backward()
    assert_all_close(got, grads(ref, x), "a full cache falls back to new buffers")
    held = workspace.cached_bytes()
    workspace.set_limit(held)                  # a limit it already meets drops nothing
    assert workspace.cached_bytes() == held
    workspace.clear()
    assert workspace.cached_bytes() == 0
    with pytest.raises(ValueError, match="limit"):
        workspace.set_limit(-1)


@pytest.mark.parametrize("raw,expected", [("", workspace.DEFAULT_LIMIT_MB << 20), ("0", 0),
                                          ("1.5", 3 << 19)])
def test_limit_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("LSTMKIT_BUFFER_CACHE_MB", raw)
    assert workspace._limit_from_env() == expected


@pytest.mark.parametrize("raw", ["lots", "-2", "nan", "inf"])
def test_bad_limit_in_the_environment(monkeypatch, raw):
    monkeypatch.setenv("LSTMKIT_BUFFER_CACHE_MB", raw)
    with pytest.raises(ValueError, match="LSTMKIT_BUFFER_CACHE_MB"):
        workspace._limit_from_env()
