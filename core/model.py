"""The LSTM of DESIGN.md, trained as torch.nn.LSTM and served one step at a time.

`StreamingLSTM` owns an ``nn.LSTM`` (batch_first) and an ``nn.Linear`` head
under the names ``lstm`` and ``head``, so its state_dict is exactly the
checkpoint's tensor names. Training calls :meth:`forward` (cuDNN on GPUs);
serving calls :meth:`step`, which writes the gate equations out, advances B
independent streams by one event with the same weights, and can return the
gate activations for explanation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class Gates(NamedTuple):
    """Gate activations of one step, each ``[num_layers, B, hidden]``."""

    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


class StepResult(NamedTuple):
    y: Tensor  # [B, output] in the model's normalised target space
    h: Tensor  # [num_layers, B, hidden]
    c: Tensor  # [num_layers, B, hidden]
    gates: Gates | None


class StreamingLSTM(nn.Module):
    """Stacked LSTM plus a linear head; the architecture every checkpoint holds."""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, output_size: int
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("output_size", output_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_size = output_size
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, output_size)

    def zero_state(self, batch: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        shape = (self.num_layers, batch, self.hidden_size)
        dev = device or self.head.weight.device
        return torch.zeros(shape, device=dev), torch.zeros(shape, device=dev)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Whole sequences: x ``[B, T, input]`` -> (y ``[B, T, output]``, (h, c))."""
        out, (h, c) = self.lstm(x, state)
        return self.head(out), (h, c)

    @torch.no_grad()
    def step(self, x: Tensor, h: Tensor, c: Tensor, return_gates: bool = False) -> StepResult:
        """Advance B streams by one event each: x ``[B, input]``, h and c ``[L, B, H]``.

        The inputs are not modified; new tensors are returned. Each row is
        computed by the same kernel whatever the batch holds (see
        :func:`rowwise_linear`), so a stream's result does not depend on which
        other streams shared its micro-batch: replays are bit-identical.
        """
        hidden = self.hidden_size
        layer_input = x
        new_h, new_c = [], []
        gates: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for layer in range(self.num_layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
            w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
            bias = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            # torch.nn.LSTM stacks the gate rows as (i, f, g, o); one product
            # over [x, h] computes W x + U h for all four gates at once.
            weight = torch.cat([w_ih, w_hh], dim=1)
            z = rowwise_linear(torch.cat([layer_input, h[layer]], dim=1), weight, bias)
            i = torch.sigmoid(z[:, :hidden])
            f = torch.sigmoid(z[:, hidden : 2 * hidden])
            g = torch.tanh(z[:, 2 * hidden : 3 * hidden])
            o = torch.sigmoid(z[:, 3 * hidden :])
            c_t = f * c[layer] + i * g
            h_t = o * torch.tanh(c_t)
            new_h.append(h_t)
            new_c.append(c_t)
            if return_gates:
                gates.append((i, f, g, o))
            layer_input = h_t
        y = rowwise_small_linear(layer_input, self.head.weight, self.head.bias)
        gate_out = None
        if return_gates:
            gate_out = Gates(*(torch.stack(parts) for parts in zip(*gates, strict=True)))
        return StepResult(y, torch.stack(new_h), torch.stack(new_c), gate_out)


def rowwise_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight.T + bias`` computed as B independent one-row products.

    A plain ``addmm`` picks its kernel (and so its summation order) by batch
    size, so a row's last bits change with the rows around it. A batched
    product of identical 1-row matrices runs one kernel per row: the same bits
    for a stream whether it is stepped alone or among thousands. It costs about
    2x a plain matmul on CPU, still far from the bottleneck.
    """
    batch = x.shape[0]
    w_t = weight.t().contiguous()
    out = torch.baddbmm(bias.expand(batch, 1, -1), x.unsqueeze(1), w_t.expand(batch, *w_t.shape))
    return out.squeeze(1)


def rowwise_small_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The same contract as :func:`rowwise_linear` for a narrow output (the head).

    Batched products with few output columns are packed across the batch by
    MKL, so rows lose their independence there; a broadcast multiply and an
    innermost-dimension sum keep one reduction per output element instead.
    """
    return (x.unsqueeze(1) * weight.unsqueeze(0)).sum(-1) + bias
