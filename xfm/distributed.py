"""Collectives the objectives need, with the process group passed in (the model never reaches for
``torch.distributed`` itself, so everything runs in a plain process).

``gather_with_grad``: ITC gathers every rank's features; the gradient flows back only through the
local slice (ALBEF/X-VLM/X-FM recipe, open_clip's ``gather_with_grad=False``): each rank's loss
differentiates its own features, and data-parallel gradient averaging does the rest.
With ``world_size == 1`` both helpers return their input and make no ``torch.distributed`` call.
All ranks must pass tensors of the same shape (the loaders drop partial batches).
"""
from __future__ import annotations

import torch

__all__ = ["gather_with_grad", "gather_no_grad"]


def _gather(tensor: torch.Tensor, group, world_size: int) -> list[torch.Tensor]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"world_size={world_size} but torch.distributed is not initialised; "
                           "pass world_size=1 for a single process")
    actual = dist.get_world_size(group)
    if actual != world_size:
        raise ValueError(f"world_size={world_size} but the process group has {actual} ranks")
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def gather_with_grad(tensor: torch.Tensor, group=None, world_size: int = 1, rank: int | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0; gradient through the local slice.

    ``rank`` is this process's rank within ``group`` (queried from the group when None).
    """
    if world_size == 1:
        return tensor
    import torch.distributed as dist

    parts = _gather(tensor.detach(), group, world_size)
    actual = dist.get_rank(group)  # local query, no collective
    if rank is None:
        rank = actual
    elif rank != actual:
        # a wrong rank would put this process's features (and gradient) in another rank's slot
        raise ValueError(f"rank={rank} but this process is rank {actual} of the group: "
                         "pass the rank within the group (LossContext.rank)")
    parts[rank] = tensor  # the local slice keeps its autograd history
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor, group=None, world_size: int = 1) -> torch.Tensor:
    """Concatenate ``tensor`` (ids, labels) from every rank along dim 0, no gradient."""
    if world_size == 1:
        return tensor
    return torch.cat(_gather(tensor, group, world_size), dim=0)
