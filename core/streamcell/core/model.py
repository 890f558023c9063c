"""The LSTM of docs/ARCHITECTURE.md, trained as torch.nn.LSTM and served one step at a time.

`StreamingLSTM` owns an ``nn.LSTM`` (batch_first) and an ``nn.Linear`` head
under the names ``lstm`` and ``head``, so its state_dict is exactly the
checkpoint's tensor names. Training calls :meth:`forward` (cuDNN on GPUs);
serving calls :meth:`step`, which writes the gate equations out, advances B
independent streams by one event with the same weights, and can return the
gate activations for explanation.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
from torch import Tensor, nn

from streamcell.core.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> a device that exists here.

    ``auto`` takes the first GPU when torch sees one and the CPU otherwise, so
    one command line serves on either; naming a GPU that is not there is an
    error rather than a silent fall back.
    """
    if not DEVICE_PATTERN.match(spec):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec}: torch {torch.__version__} sees no CUDA GPU "
                "(a CPU build of torch, or no GPU/driver on this machine)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec}: torch sees {torch.cuda.device_count()} GPU(s)")
    return device


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
        self._fused: tuple[tuple, list[tuple[Tensor, Tensor]]] | None = None

    def fused_weights(self) -> list[tuple[Tensor, Tensor]]:
        """Per layer ``[W_ih | W_hh]`` and ``b_ih + b_hh``, as :meth:`step` uses them:
        the g gate's rows doubled, so that the product holds ``2 (W x + U h + b)`` for g,
        the argument of ``tanh(z) = 2 sigmoid(2z) - 1`` (a power of two: exactly).

        Built once and kept (building them was two copies per layer on every
        step); built again when a parameter was changed or moved since (its
        storage or its version counter differs).
        """
        params = list(self.lstm.parameters())
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._fused is None or self._fused[0] != key:
            fused = []
            for layer in range(self.num_layers):
                w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
                w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
                b_ih = getattr(self.lstm, f"bias_ih_l{layer}")
                b_hh = getattr(self.lstm, f"bias_hh_l{layer}")
                # torch.nn.LSTM stacks the gate rows as (i, f, g, o); one product
                # over [x, h] computes W x + U h for all four gates at once.
                weight = torch.cat([w_ih, w_hh], dim=1).detach()
                bias = (b_ih + b_hh).detach()
                g_rows = slice(2 * self.hidden_size, 3 * self.hidden_size)
                weight[g_rows] *= 2.0
                bias[g_rows] *= 2.0
                fused.append((weight, bias))
            self._fused = (key, fused)
        return self._fused[1]

    def zero_state(self, batch: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        shape = (self.num_layers, batch, self.hidden_size)
        dev = device or self.head.weight.device
        return torch.zeros(shape, device=dev), torch.zeros(shape, device=dev)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None, members: int = 1
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Whole sequences: x ``[B, T, input]`` -> (y ``[B, T, output]``, (h, c)).

        ``members`` > 1: the hidden units are that many independent members in
        equal blocks (streamcell.trainer.ensemble), and y is each member's own
        output ``[B, T, members, output]``, whose mean over members is the
        plain head's (the head holds each member's weights divided by members).
        """
        out, (h, c) = self.lstm(x, state)
        if members == 1:
            return self.head(out), (h, c)
        b, t, units = out.shape
        blocks = out.view(b, t, members, units // members)
        weight = self.head.weight.view(self.output_size, members, units // members)
        per = torch.einsum("btkh,okh->btko", blocks, weight)
        return per * members + self.head.bias, (h, c)

    @torch.no_grad()
    def step(self, x: Tensor, h: Tensor, c: Tensor, return_gates: bool = False) -> StepResult:
        """Advance B streams by one event each: x ``[B, input]``, h and c ``[L, B, H]``.

        The inputs are not modified; new tensors are returned. Each row is
        computed by the same kernel whatever the batch holds (see
        :func:`rowwise_linear`), so a stream's result does not depend on which
        other streams shared its micro-batch: replays are bit-identical.
        """
        hidden = self.hidden_size
        whole = hidden % WHOLE_ROWS == 0
        layer_input = x
        new_h = torch.empty(h.shape, dtype=h.dtype, device=h.device)
        new_c = torch.empty(c.shape, dtype=c.dtype, device=c.device)
        gates: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for layer, (weight, bias) in enumerate(self.fused_weights()):
            z = rowwise_linear(torch.cat([layer_input, h[layer]], dim=1), weight, bias)
            if whole:  # one sigmoid over the four gates (g's rows hold 2z: see fused_weights)
                z.sigmoid_()
                i, f, o = z[:, :hidden], z[:, hidden : 2 * hidden], z[:, 3 * hidden :]
                g = z[:, 2 * hidden : 3 * hidden].mul_(_TWO).sub_(_ONE)
            else:
                i = torch.sigmoid(z[:, :hidden])
                f = torch.sigmoid(z[:, hidden : 2 * hidden])
                o = torch.sigmoid(z[:, 3 * hidden :])
                scratch = z[:, 2 * hidden : 3 * hidden]
                g = torch.sigmoid(scratch).mul_(_TWO).sub_(_ONE)
            c_t = torch.add(f * c[layer], i * g, out=new_c[layer])
            if whole:
                tanh_c = torch.mul(c_t, _TWO).sigmoid_().mul_(_TWO).sub_(_ONE)
            else:  # the g rows are free now (g itself is a copy)
                tanh_c = _tanh_rows(c_t, scratch)
            h_t = torch.mul(o, tanh_c, out=new_h[layer])
            if return_gates:
                gates.append((i, f, g, o))
            layer_input = h_t
        y = rowwise_linear(layer_input, self.head.weight, self.head.bias)
        gate_out = None
        if return_gates:
            gate_out = Gates(*(torch.stack(parts) for parts in zip(*gates, strict=True)))
        return StepResult(y, new_h, new_c, gate_out)


def _tanh_rows(x: Tensor, scratch: Tensor) -> Tensor:
    """tanh(x) = 2·sigmoid(2x) − 1, row by row; equal to float32 rounding (< 2.4e-7).

    Five times faster than torch.tanh on CPU, where tanh took a quarter of the
    step. ``scratch`` is a ``[B, H]`` column slice of a wider buffer (it may be
    ``x`` itself): elementwise kernels walk a strided view one row at a time,
    so every row meets the same vector/scalar split whatever B is, which keeps
    the step batch-invariant (a contiguous ``[B, H]`` tensor would be walked
    as one flat array, putting rows at different vector offsets).
    """
    torch.mul(x, _TWO, out=scratch)
    return torch.sigmoid(scratch).mul_(_TWO).sub_(_ONE)


# The step's constants as 0-dim float32 tensors: a Python float is wrapped as a double
# tensor and cast to the operand's dtype on every call (a cost small waves feel);
# a 0-dim tensor is the same CPU scalar to the kernels, with the same
# value, so the results are the same bits. Allowed with tensors on any device.
_TWO = torch.tensor(2.0)
_ONE = torch.tensor(1.0)

# A hidden size that is a multiple of this lets elementwise kernels walk the gates, and
# a [B, hidden] tensor, as one flat array with no scalar tail whatever B is (32 floats:
# two AVX-512 vectors), so one call serves all four gates and every row gets the same
# vector code: the step stays batch-invariant. Other sizes go gate by gate, row by row.
WHOLE_ROWS = 32

MIN_GEMM_ROWS = 64
MIN_GEMM_COLUMNS = 16


def rowwise_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight.T + bias`` whose row k depends on ``x[k]`` alone, bit for bit.

    BLAS picks its kernel, and so its summation order, by matrix shape: a
    stream's last bits would change with the number of streams sharing its
    micro-batch, and a replayed event would not reproduce its prediction.
    Padding to at least ``MIN_GEMM_ROWS`` rows keeps every product on the same
    blocked kernel; narrow outputs (the head, tiny hidden sizes), which BLAS
    packs across rows, use a broadcast multiply with one innermost reduction
    per output instead. tests/core/test_model.py checks the property.
    """
    if weight.shape[0] < MIN_GEMM_COLUMNS:
        return (x.unsqueeze(1) * weight.unsqueeze(0)).sum(-1) + bias
    rows = x.shape[0]
    if rows < MIN_GEMM_ROWS:
        x = torch.cat([x, x.new_zeros(MIN_GEMM_ROWS - rows, x.shape[1])])
    return torch.addmm(bias, x, weight.t())[:rows]
