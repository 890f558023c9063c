"""The streaming step against torch.nn.LSTM to float32 rounding (docs/ARCHITECTURE.md, The LSTM)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcell.core.model import StreamingLSTM

TOL = 1e-5


def make(input_size: int, hidden: int, layers: int, output: int, seed: int) -> StreamingLSTM:
    torch.manual_seed(seed)
    return StreamingLSTM(input_size, hidden, layers, output).eval()


def run_stepwise(
    model: StreamingLSTM, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, steps, _ = x.shape
    h, c = model.zero_state(batch)
    ys = []
    for t in range(steps):
        out = model.step(x[:, t], h, c)
        h, c = out.h, out.c
        ys.append(out.y)
    return torch.stack(ys, dim=1), h, c


@settings(max_examples=25, deadline=None)
@given(
    input_size=st.integers(1, 9),
    hidden=st.integers(1, 40),
    layers=st.integers(1, 3),
    output=st.integers(1, 4),
    batch=st.integers(1, 17),
    steps=st.integers(1, 12),
    seed=st.integers(0, 10_000),
)
def test_step_agrees_with_torch_lstm(input_size, hidden, layers, output, batch, steps, seed):
    model = make(input_size, hidden, layers, output, seed)
    x = torch.randn(batch, steps, input_size, generator=torch.Generator().manual_seed(seed)) * 3
    y_ref, (h_ref, c_ref) = model(x)
    y, h, c = run_stepwise(model, x)
    assert (y - y_ref).abs().max().item() <= TOL
    assert (h - h_ref).abs().max().item() <= TOL
    assert (c - c_ref).abs().max().item() <= TOL


def test_stepping_from_a_carried_state_equals_the_whole_sequence():
    model = make(4, 16, 2, 4, seed=1)
    x = torch.randn(3, 20, 4)
    y_whole, state = model(x)
    y_first, state_mid = model(x[:, :8])
    y_rest = []
    h, c = state_mid
    for t in range(8, 20):
        out = model.step(x[:, t], h, c)
        h, c = out.h, out.c
        y_rest.append(out.y)
    stitched = torch.cat([y_first, torch.stack(y_rest, dim=1)], dim=1)
    assert (stitched - y_whole).abs().max().item() <= TOL
    assert (h - state[0]).abs().max().item() <= TOL


def test_gates_lie_in_their_ranges_and_rebuild_the_state():
    model = make(3, 8, 2, 3, seed=2)
    h, c = model.zero_state(5)
    h, c = torch.randn_like(h), torch.randn_like(c)
    out = model.step(torch.randn(5, 3) * 10, h, c, return_gates=True)
    g = out.gates
    assert g is not None
    for gate in (g.i, g.f, g.o):
        assert gate.shape == (2, 5, 8)
        assert gate.min() >= 0 and gate.max() <= 1
    assert g.g.min() >= -1 and g.g.max() <= 1
    # c_t = f * c_{t-1} + i * g and h_t = o * tanh(c_t), layer by layer
    assert torch.allclose(out.c, g.f * c + g.i * g.g, atol=1e-6)
    assert torch.allclose(out.h, g.o * torch.tanh(out.c), atol=1e-6)


def test_step_does_not_modify_its_inputs():
    model = make(3, 8, 2, 3, seed=3)
    x, h, c = torch.randn(4, 3), torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    copies = (x.clone(), h.clone(), c.clone())
    model.step(x, h, c)
    for before, after in zip(copies, (x, h, c), strict=True):
        assert torch.equal(before, after)


@settings(max_examples=40, deadline=None)
@given(
    hidden=st.sampled_from([3, 4, 10, 16, 32, 64, 100]),
    output=st.integers(1, 12),
    batch=st.integers(2, 700),
    seed=st.integers(0, 999),
)
def test_a_stream_gets_the_same_bits_alone_or_in_any_batch(hidden, output, batch, seed):
    """Replays must be bit-identical whatever else shares the micro-batch."""
    torch.set_num_threads(1)
    model = make(5, hidden, 2, output, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, generator=gen)
    h, c = (
        torch.randn(2, batch, hidden, generator=gen),
        torch.randn(2, batch, hidden, generator=gen),
    )
    together = model.step(x, h, c)
    for row in (0, batch // 2, batch - 1):
        alone = model.step(x[row : row + 1], h[:, row : row + 1], c[:, row : row + 1])
        assert torch.equal(alone.y[0], together.y[row])
        assert torch.equal(alone.h[:, 0], together.h[:, row])
        assert torch.equal(alone.c[:, 0], together.c[:, row])


def test_rejects_nonsense_sizes():
    for bad in (0, -1, 2.5, True):
        try:
            StreamingLSTM(bad, 4, 1, 1)  # type: ignore[arg-type]
        except ValueError as exc:
            assert "input_size" in str(exc)
        else:
            raise AssertionError(f"accepted input_size={bad!r}")


def test_the_kept_fused_weights_follow_changes_to_the_parameters():
    torch.manual_seed(0)
    model = StreamingLSTM(3, 16, 2, 2)
    other = StreamingLSTM(3, 16, 2, 2)
    x, (h, c) = torch.randn(4, 3), model.zero_state(4)
    before = model.step(x, h, c).y
    model.load_state_dict(other.state_dict())  # in place: the kept weights are stale now
    assert torch.equal(model.step(x, h, c).y, other.step(x, h, c).y)
    assert not torch.equal(model.step(x, h, c).y, before)
    with torch.no_grad():
        model.lstm.bias_hh_l1.add_(1.0)
    fresh = StreamingLSTM(3, 16, 2, 2)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(model.step(x, h, c).y, fresh.step(x, h, c).y)
