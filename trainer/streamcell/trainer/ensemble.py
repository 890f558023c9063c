"""An ensemble of K LSTMs trained side by side and served as one model.

Member k owns the k-th block of ``hidden`` units in every layer: its gate rows
read the input and its own block of the layer below and of its own state, and
nothing of the other members (the recurrent weights and the input weights
above the first layer are block-diagonal; the zero blocks are kept zero after
every optimiser step). The head's weight is the members' heads side by side,
each divided by K, and the bias is shared, so the plain head of the wide model
*is* the mean of the members' outputs: the checkpoint is an ordinary
``StreamingLSTM`` of ``K * hidden`` units that the Predictor serves unchanged,
at the cost of a wider state. Each member is trained on its own loss
(``StreamingLSTM.forward(..., members=K)``), so the members stay independent models whose mean
has less variance than any one of them (the seed ensembles of DeepAR and
N-BEATS, at the price of one wider step rather than K).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from streamcell.core.model import StreamingLSTM

Masks = list[tuple[nn.Parameter, Tensor]]


def init_members(model: StreamingLSTM, members: int) -> Masks:
    """Initialise ``model`` as ``members`` independent blocks; returns the masks to keep.

    Each block gets the initial scale a model of its own size would have
    (torch's LSTM and Linear draw from U(-1/sqrt(fan), 1/sqrt(fan)) by the
    layer's width), so an ensemble member starts like a standalone model.
    """
    hidden = model.hidden_size // members
    if members < 1 or hidden * members != model.hidden_size:
        raise ValueError(f"{model.hidden_size} units do not split into {members} members")
    bound = 1 / math.sqrt(hidden)
    with torch.no_grad():
        for p in model.lstm.parameters():
            p.uniform_(-bound, bound)
        # The served head is the mean: member k's own head is K times its block.
        model.head.weight.uniform_(-bound / members, bound / members)
        model.head.bias.uniform_(-bound, bound)
    masks = block_masks(model, members)
    keep_blocks(masks)
    return masks


def block_masks(net: nn.Module, members: int) -> Masks:
    """The weights that cross members, each with its 0/1 mask (none for one member).

    ``net`` is the model or a wrapper holding it as ``.module`` (DDP).
    """
    if members == 1:
        return []
    model = getattr(net, "module", net)
    assert isinstance(model, StreamingLSTM)
    hidden = model.hidden_size // members
    masks: Masks = []
    for name, p in model.lstm.named_parameters():
        if name.startswith("weight_hh") or (
            name.startswith("weight_ih") and not name.endswith("_l0")
        ):
            masks.append((p, _block_mask(members, hidden).to(p.device)))
    return masks


def keep_blocks(masks: Masks) -> None:
    """Zero what the optimiser moved off the diagonal blocks (after each step)."""
    with torch.no_grad():
        for p, mask in masks:
            p.mul_(mask)


def _block_mask(members: int, hidden: int) -> Tensor:
    """``[4 * K * H, K * H]``: 1 where a gate row (i, f, g, o stacked) reads its own member."""
    own = torch.block_diag(*[torch.ones(hidden, hidden)] * members)
    return own.repeat(4, 1)


def merge_members(models: list[StreamingLSTM]) -> StreamingLSTM:
    """Models of one shape -> one model whose members they are (its output: their mean).

    Exact: the merged model's step gives the mean of the models' steps, up to
    float rounding, with each model's (h, c) as its own block of the state.
    """
    first = models[0]
    k, hidden, layers = len(models), first.hidden_size, first.num_layers
    shapes = {(m.input_size, m.hidden_size, m.num_layers, m.output_size) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"members must share one shape, got {sorted(shapes)}")
    merged = StreamingLSTM(first.input_size, k * hidden, layers, first.output_size)
    with torch.no_grad():
        for name, p in merged.lstm.named_parameters():
            parts = [getattr(m.lstm, name).detach().view(4, hidden, -1) for m in models]
            if name.startswith("bias"):
                p.copy_(torch.cat(parts, dim=1).reshape(-1))
            elif name.startswith("weight_ih") and name.endswith("_l0"):
                p.copy_(torch.cat(parts, dim=1).reshape(p.shape))
            else:  # block-diagonal: member j's gate rows read member j's units only
                p.zero_()
                view = p.view(4, k, hidden, k, hidden)
                for j, part in enumerate(parts):
                    view[:, j, :, j, :] = part
        merged.head.weight.copy_(torch.cat([m.head.weight.detach() for m in models], dim=1) / k)
        merged.head.bias.copy_(torch.stack([m.head.bias.detach() for m in models]).mean(dim=0))
    return merged.to(first.head.weight.device).eval()
