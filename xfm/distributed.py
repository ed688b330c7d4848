"""Collectives the objectives need, with the process group passed in (the model never reaches for
``torch.distributed`` itself, so everything runs in a plain process).

``gather_with_grad``: ITC gathers every rank's features; the gradient flows back only through the
local slice (ALBEF/X-VLM/X-FM recipe, open_clip's ``gather_with_grad=False``): each rank's loss
differentiates its own features, and data-parallel gradient averaging does the rest.
With ``world_size == 1`` both helpers return their input and make no ``torch.distributed`` call.

The first dimension may differ between ranks (the region stream has as many rows as its pictures
have boxes): every rank first gathers the shapes, pads its tensor to the largest row count,
gathers, and cuts each rank's padding off again, so no row is dropped. The other dimensions must
agree (a clear error otherwise, raised on every rank, before the data gather).
"""
from __future__ import annotations

import torch

__all__ = ["gather_with_grad", "gather_no_grad"]


def _check_group(group, world_size: int):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"world_size={world_size} but torch.distributed is not initialised; "
                           "pass world_size=1 for a single process")
    actual = dist.get_world_size(group)
    if actual != world_size:
        raise ValueError(f"world_size={world_size} but the process group has {actual} ranks")
    return dist


def _gather(tensor: torch.Tensor, group, world_size: int) -> list[torch.Tensor]:
    """Every rank's ``tensor``, in rank order; the first dimension may differ between ranks."""
    dist = _check_group(group, world_size)
    if tensor.dim() == 0:
        raise ValueError("gather: a 0-dim tensor has no first dimension to concatenate; reshape it to (1,)")
    tensor = tensor.contiguous()
    # 1. the shapes (one small collective): row counts may differ, and a mismatch in any other
    #    dimension must fail on every rank alike instead of hanging or gathering garbage
    shape = torch.tensor(tensor.shape, dtype=torch.int64, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape, group=group)
    shapes = [tuple(int(x) for x in s) for s in shapes]
    rest = shapes[0][1:]
    if any(s[1:] != rest for s in shapes):
        raise ValueError(f"gather: tensors differ beyond the first dimension across ranks: {shapes}")
    rows = [s[0] for s in shapes]
    most = max(rows)
    # 2. the data, every rank padded to the largest row count (all_gather needs equal sizes)
    if tensor.shape[0] < most:
        pad = tensor.new_zeros((most - tensor.shape[0], *rest))
        tensor = torch.cat((tensor, pad), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor, group=group)
    # 3. each rank's real rows only
    return [p[:n] for p, n in zip(parts, rows)]


def gather_with_grad(tensor: torch.Tensor, group=None, world_size: int = 1, rank: int | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0; gradient through the local slice.

    ``rank`` is this process's rank within ``group`` (queried from the group when None). Ranks
    may pass different row counts (dim 0); the result has their sum, in rank order.
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
    """Concatenate ``tensor`` (ids, labels) from every rank along dim 0, no gradient; the row
    count may differ between ranks."""
    if world_size == 1:
        return tensor
    return torch.cat(_gather(tensor, group, world_size), dim=0)
