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


def side_by_side(models: list[StreamingLSTM], output_size: int) -> StreamingLSTM:
    """The models' LSTMs as blocks of one (any widths; each reads only its own state).

    Their inputs are the same; the head is left zero for the caller to fill
    (block j of its columns reads model j's units).
    """
    shapes = {(m.input_size, m.num_layers) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"models side by side must share inputs and layers, got {sorted(shapes)}")
    widths = [m.hidden_size for m in models]
    total = sum(widths)
    merged = StreamingLSTM(models[0].input_size, total, models[0].num_layers, output_size)
    with torch.no_grad():
        for name, p in merged.lstm.named_parameters():
            p.zero_()
            view = p.view(4, total, -1)
            at = 0
            for m, w in zip(models, widths, strict=True):
                part = getattr(m.lstm, name).detach().view(4, w, -1)
                if name.startswith("bias") or name == "weight_ih_l0":  # the same inputs, or none
                    view[:, at : at + w] = part
                else:  # the state (or the layer below) of its own block only
                    view[:, at : at + w, at : at + w] = part
                at += w
        merged.head.weight.zero_()
        merged.head.bias.zero_()
    return merged.to(models[0].head.weight.device)


def average_models(models: list[StreamingLSTM]) -> StreamingLSTM:
    """Models of one head (any widths) -> one model whose output is their mean."""
    if len({m.output_size for m in models}) != 1:
        raise ValueError(
            f"averaged models must share one head, got {[m.output_size for m in models]}"
        )
    merged = side_by_side(models, models[0].output_size)
    with torch.no_grad():
        merged.head.weight.copy_(
            torch.cat([m.head.weight.detach() for m in models], 1) / len(models)
        )
        merged.head.bias.copy_(torch.stack([m.head.bias.detach() for m in models]).mean(dim=0))
    return merged.eval()


def splice_first_step(first: StreamingLSTM, rest: StreamingLSTM, width: int) -> StreamingLSTM:
    """One model whose head's first step is ``first``'s and whose later steps are ``rest``'s.

    ``width``: the head's outputs per step (levels x targets; the head is laid
    out ``[horizon, levels, targets]``). The two LSTMs sit side by side
    (:func:`side_by_side`), so online predictions (the first step) come from
    one model and a Forecast's later steps from the other, served as an
    ordinary checkpoint of ``first.hidden_size + rest.hidden_size`` units
    with ``rest``'s horizon.
    """
    if first.output_size < width or rest.output_size <= width:
        raise ValueError(
            f"the first model needs a step of {width} outputs and the second more, "
            f"got {first.output_size} and {rest.output_size}"
        )
    a = first.hidden_size
    merged = side_by_side([first, rest], rest.output_size)
    with torch.no_grad():
        merged.head.weight[:width, :a] = first.head.weight.detach()[:width]
        merged.head.weight[width:, a:] = rest.head.weight.detach()[width:]
        merged.head.bias.copy_(rest.head.bias.detach())
        merged.head.bias[:width] = first.head.bias.detach()[:width]
    return merged.eval()
