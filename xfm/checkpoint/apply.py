"""Copy a mapped state dict into a model: shape checks, tie-aware bookkeeping, the report.

Adapters translate foreign names into ours and hand over ``{our_key: (source_key, tensor)}``;
this module is the one place that touches the model. Tensors are copied in place into the
model's own parameters (``state_dict()`` shares their storage), so weights tied in the model
(the text MLM decoder and the word embeddings) stay the same object, and a model built on the
``meta`` device can be "loaded" with meta tensors to check a layout without allocating it.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .report import CheckpointError, LoadReport

Mapped = Mapping[str, tuple[str, torch.Tensor]]


def tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Every state-dict name -> all names of the same parameter (including itself)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return {n: names for names in groups.values() for n in names}


def apply_mapped(model: nn.Module, mapped: Mapped, *, source: str, fmt: str,
                 in_scope: Callable[[str], bool], is_new: Callable[[str], bool] = lambda k: False,
                 ignored: Mapping[str, str] | None = None, unused: Iterable[str] = ()) -> LoadReport:
    """Check every mapped tensor against the model's shapes, copy them in, report.

    ``in_scope(our_key)`` says which of our keys this source is expected to fill (``missing`` is
    computed over those); ``is_new(our_key)`` marks keys that are new by design.
    Raises :class:`CheckpointError` naming the source key, our key, both shapes and the file on
    the first shape mismatch, before anything is copied.
    """
    ours = model.state_dict()
    aliases = tied_aliases(model)
    unused = list(unused)
    plan: list[tuple[str, str, torch.Tensor]] = []
    for key, (src_key, tensor) in mapped.items():
        if key not in ours:
            unused.append(src_key)  # e.g. a source layer beyond the model's depth
            continue
        target = ours[key]
        if tuple(tensor.shape) != tuple(target.shape):
            if tensor.numel() == 1 and target.numel() == 1:
                tensor = tensor.reshape(target.shape)  # scalar stored as () or (1,)
            else:
                raise CheckpointError(
                    f"{source}: shape mismatch for {src_key!r} (-> {key!r}): the model expects "
                    f"{tuple(target.shape)}, the checkpoint has {tuple(tensor.shape)}")
        plan.append((key, src_key, tensor))

    filled: set[str] = set()
    with torch.no_grad():
        for key, src_key, tensor in plan:
            target = ours[key]
            if target.is_meta or tensor.is_meta:
                if not target.is_meta:
                    raise CheckpointError(f"{source}: {src_key!r} has no data (meta tensor)")
            else:
                target.copy_(tensor)
            filled.update(aliases.get(key, [key]))

    scope = [k for k in ours if in_scope(k)]
    return LoadReport(
        source=source, format=fmt,
        loaded=sorted(k for k in filled),
        missing=sorted(k for k in scope if k not in filled and not is_new(k)),
        unused=sorted(set(unused)),
        ignored=dict(ignored or {}),
        new=sorted(k for k in scope if k not in filled and is_new(k)),
    )


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a tied duplicate really holds the same values (meta tensors: shapes only)."""
    if a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:
        return True
    return torch.equal(a, b)


def require_clean(report: LoadReport, what: str) -> None:
    """Strict formats (ours, the official one): a missing or unexpected key is an error."""
    if report.clean:
        return
    parts = []
    if report.missing:
        parts.append(f"missing keys {report.missing[:20]}" + (" ..." if len(report.missing) > 20 else ""))
    if report.unused:
        parts.append(f"unexpected keys {report.unused[:20]}" + (" ..." if len(report.unused) > 20 else ""))
    raise CheckpointError(f"{report.source}: does not match the {what} layout: " + "; ".join(parts)
                          + " (pass strict=False to load anyway and get the report)")
