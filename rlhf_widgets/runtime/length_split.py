"""Less padding in the TRL stages' steps, with the same batches: each batch is run as a few length-sorted pieces.

A TRL collator pads a batch to its longest row, and on CPU every padded position costs a full forward and
backward through the linear layers, so the more a batch's lengths vary, the more of its compute is padding (the
sandbox's share: docs/PERFORMANCE.md, "The float32 path, stage by stage"). Here a training step sorts the batch's
rows (or pairs) by length, cuts them into contiguous groups — where a cut saves more padded positions than one more
forward and backward costs (`OVERHEAD_TOKENS`) — trims each group's padding and runs the trainer's own
`training_step` on it.
The gradients add up to the whole batch's: the step still sees every row of its batch, the optimizer steps once
per batch, and the loss is the same sum over the same rows — only the order of the float additions differs.

- SFT: the loss is summed over the batch's completion tokens and divided by their count (`num_items_in_batch`),
  so each piece's loss is already its share; without that count the step runs whole.
- Reward model and DPO: the loss is a mean over the batch's pairs, so each piece's loss is weighted by its share
  of the pairs (`_piece_weight`); a pair's chosen and rejected rows stay in one piece.

What changes beside the float order: the logged per-step metrics that TRL averages per call (SFT's entropy and
token accuracy, the reward model's accuracy and margin, DPO's rewards) are averaged over pieces instead of whole
batches. Used only where one process trains on CPU without DeepSpeed (each backward of a piece would otherwise
talk to the other processes), in float32 only — where it was measured to pay (docs/PERFORMANCE.md); right-padded
batches only (the SFT and reward collators'; DPO's) — anything else
runs whole.
"""

from __future__ import annotations

from typing import Any

import torch

OVERHEAD_TOKENS = 48
"""One more forward and backward of a piece, in padded positions it must save to be worth it (the sandbox model
on CPU: a piece's fixed cost — Python, autograd, the optimizer-free part of a step — is about the compute of 48
tokens)."""


def length_groups(lengths: list[int], overhead: int = OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices of `lengths` sorted by length and cut into contiguous groups that minimise Σ (group size × its
    longest) + overhead × groups (exact, by dynamic programming); one group when cutting saves nothing."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + (j - i) * longest + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _right_padded_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """Each row's length when every row of `mask` (B, T) is 1s then 0s, else None."""
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask.bool(), positions.unsqueeze(0) < lengths.unsqueeze(1)):
        return None
    return lengths


def _piece(inputs: dict[str, Any], rows: torch.Tensor, width: int, batch: int) -> dict[str, Any] | None:
    """`inputs` restricted to `rows`, (B, T) tensors trimmed to `width` columns; None when a value is neither
    (B,) nor (B, T)."""
    out = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
            if isinstance(value, torch.Tensor):
                return None
            out[key] = value
        elif value.dim() == 1:
            out[key] = value[rows]
        elif value.dim() == 2:
            out[key] = value[rows, :width]
        else:
            return None
    return out


class _SplitSteps:
    """The mixin: `training_step` over length-sorted pieces; `_length_pieces` says how to cut a batch."""

    _piece_weight: float = 1.0

    def _splits_here(self) -> bool:
        from accelerate.utils import DistributedType

        accelerator = self.accelerator
        return (accelerator.num_processes == 1 and accelerator.distributed_type != DistributedType.DEEPSPEED
                and accelerator.device.type == "cpu" and not (self.args.bf16 or self.args.fp16))

    def _length_pieces(self, inputs: dict[str, Any], num_items_in_batch) -> list[tuple[dict, float]] | None:
        raise NotImplementedError

    def training_step(self, model, inputs, num_items_in_batch=None):
        pieces = self._length_pieces(inputs, num_items_in_batch) if self._splits_here() else None
        if pieces is None or len(pieces) < 2:
            return super().training_step(model, inputs, num_items_in_batch)
        total = None
        try:
            for piece, weight in pieces:
                self._piece_weight = weight
                loss = super().training_step(model, piece, num_items_in_batch)
                total = loss if total is None else total + loss
        finally:
            self._piece_weight = 1.0
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self._piece_weight == 1.0:
            return out
        if return_outputs:
            return out[0] * self._piece_weight, out[1]
        return out * self._piece_weight


class _SplitSFT(_SplitSteps):
    """SFT: rows cut by length; the loss is already normalised by the whole batch's token count."""

    def _length_pieces(self, inputs, num_items_in_batch):
        mask = inputs.get("attention_mask")
        if num_items_in_batch is None or mask is None or mask.dim() != 2:
            return None
        lengths = _right_padded_lengths(mask)
        if lengths is None:
            return None
        pieces = []
        for group in length_groups(lengths.tolist()):
            rows = torch.tensor(group, device=mask.device)
            piece = _piece(inputs, rows, int(lengths[rows].max()), mask.shape[0])
            if piece is None:
                return None
            pieces.append((piece, 1.0))
        return pieces


class _SplitPairs(_SplitSteps):
    """Reward model: (2B, T) inputs, chosen rows then rejected rows; pairs cut by the longer of their two rows, each
    piece's mean loss weighted by its share of the pairs."""

    def _length_pieces(self, inputs, num_items_in_batch):
        mask = inputs.get("attention_mask")
        if mask is None or mask.dim() != 2 or mask.shape[0] % 2:
            return None
        lengths = _right_padded_lengths(mask)
        if lengths is None:
            return None
        pairs = mask.shape[0] // 2
        pair_lengths = torch.maximum(lengths[:pairs], lengths[pairs:])
        pieces = []
        for group in length_groups((2 * pair_lengths).tolist(), overhead=OVERHEAD_TOKENS):
            index = torch.tensor(group, device=mask.device)
            rows = torch.cat([index, index + pairs])
            piece = _piece(inputs, rows, int(pair_lengths[index].max()), mask.shape[0])
            if piece is None:
                return None
            pieces.append((piece, len(group) / pairs))
        return pieces


PAIR_MEAN_DPO_LOSSES = frozenset({"sigmoid", "hinge", "ipo", "sigmoid_norm"})
"""DPO loss types that are a mean over the batch's pairs of a per-pair term (TRL 1.x), so pieces weighted by their
share of the pairs add up to them; others ("sft": a token mean over the batch, "bco_pair": running statistics, …)
run whole."""


class _SplitDPO(_SplitPairs):
    """DPO: (2B, T) inputs like the reward model's, chosen rows then rejected rows, when its loss is a mean over pairs
    (`PAIR_MEAN_DPO_LOSSES`, no MoE auxiliary loss); the reference's log-probs are computed per piece too."""

    def _length_pieces(self, inputs, num_items_in_batch):
        if not set(self.loss_types) <= PAIR_MEAN_DPO_LOSSES or getattr(self, "aux_loss_enabled", False):
            return None
        return super()._length_pieces(inputs, num_items_in_batch)


_SPLITTERS = {"SFTTrainer": _SplitSFT, "RewardTrainer": _SplitPairs, "DPOTrainer": _SplitDPO}


def length_split(trainer_cls: type) -> type:
    """`trainer_cls` with its training steps run in length-sorted pieces (a subclass named after it), for the
    trainers whose loss this module knows (TRL's SFT, reward and DPO trainers and their subclasses); others
    unchanged."""
    for base in trainer_cls.__mro__:
        mixin = _SPLITTERS.get(base.__name__)
        if mixin is not None:
            return type(trainer_cls.__name__, (mixin, trainer_cls), {"__module__": trainer_cls.__module__})
    return trainer_cls
