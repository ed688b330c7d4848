"""Fused ops for X-FM. Layers call only these entry points; each op has a pure-PyTorch
reference (the spec) and a Triton fast path, chosen by ``xfm.kernels.dispatch``.

- ``attention(q, k, v, mask=None, *, dropout_p=0.0, scale=None, backend=None)``
- ``contrastive_loss(image_feat, text_feat, temp, image_ids=None, *, backend=None)``

The first Triton use of each compiled configuration on CUDA is checked against the reference
(``xfm.kernels.selfcheck``; ``XFM_KERNEL_SELFCHECK=0|1`` turns the check off / on everywhere).
"""
from .dispatch import (KernelSelfCheckError, KernelUnavailableError, attention, backend_scope, contrastive_loss,
                       get_backend, set_backend, triton_available)
from .selfcheck import KernelSelfCheckWarning
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
    "KernelUnavailableError",
    "KernelSelfCheckError",
    "KernelSelfCheckWarning",
]
