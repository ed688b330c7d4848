"""Fused ops for X-FM. Layers call only these entry points; each op has a pure-PyTorch
reference (the spec) and a Triton fast path, chosen by ``xfm.kernels.dispatch``.

- ``attention(q, k, v, mask=None, *, dropout_p=0.0, scale=None, backend=None)``
- ``contrastive_loss(image_feat, text_feat, temp, image_ids=None, *, backend=None)``
"""
from .dispatch import attention, contrastive_loss, set_backend, get_backend, backend_scope, triton_available
from .reference import attention_reference, contrastive_loss_reference

__all__ = [
    "attention",
    "contrastive_loss",
    "attention_reference",
    "contrastive_loss_reference",
    "set_backend",
    "get_backend",
    "backend_scope",
    "triton_available",
]
