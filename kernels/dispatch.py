"""Choose, per op, between the torch reference and the Triton fast path.

Backends: ``auto`` takes Triton for the ops in ``AUTO_TAKES_TRITON`` when it is installed and the
inputs are eligible (CUDA tensors of a supported dtype/shape), else the reference; on CPU ``auto``
always means the reference. Measured on one H200 (BENCHMARKS.md, "GPU"), ``auto`` takes the fused
contrastive loss (1.6-3.5x faster than the plain loss, 3-80x less memory) but SDPA for attention:
the fused attention's kernels are faster than SDPA's (0.067 vs 0.091 ms per forward+backward at
30 tokens) yet each call costs ~0.9 ms of host time against SDPA's 0.2, so an eager training step
of the base model took 20% longer with it (and used 13% less memory). ``triton`` still selects it.
``triton`` on CPU tensors runs only under ``TRITON_INTERPRET=1`` (set before triton is imported),
which is how the CPU tests run the Triton code itself. ``torch`` always takes the reference. ``triton``
takes Triton or raises a clear error saying why it cannot run: never a silent fallback.
The backend comes from the call (``backend=``), else from ``set_backend`` / ``backend_scope``
(which the model sets from ``ModelConfig.kernels``), else ``auto``.

Self-check (``selfcheck``): the first time the Triton path is taken for a compiled configuration on
CUDA (everywhere with ``XFM_KERNEL_SELFCHECK=1``), the fused op is compared with the reference on
small inputs, forward and backward. If it disagrees, ``auto`` uses the reference for that
configuration from then on, with one ``KernelSelfCheckWarning`` saying what disagreed, and
``triton`` raises ``KernelSelfCheckError`` (on every call of that configuration: asked for the fused
kernel, the caller gets it or an error, never silently something else).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

from . import selfcheck
from .reference import attention_reference, contrastive_loss_reference
from .selfcheck import KernelSelfCheckWarning

_VALID = ("auto", "torch", "triton")
_backends = {"attention": "auto", "contrastive": "auto"}
# which ops ``auto`` sends to Triton on eligible inputs (see the module docstring for why)
AUTO_TAKES_TRITON = {"attention": False, "contrastive": True}


class KernelUnavailableError(RuntimeError):
    """Asked for the Triton path where it cannot run."""


class KernelSelfCheckError(KernelUnavailableError):
    """Asked for the Triton path for a configuration whose self-check failed."""


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def set_backend(op: str | None = None, backend: str = "auto", **per_op: str) -> None:
    """``set_backend("attention", "triton")`` or ``set_backend(attention="torch", contrastive="auto")``."""
    updates = dict(per_op)
    if op is not None:
        updates[op] = backend
    for name, value in updates.items():
        if name not in _backends:
            raise ValueError(f"unknown kernel op {name!r}; known: {sorted(_backends)}")
        if value not in _VALID:
            raise ValueError(f"kernels.{name}: backend must be one of {_VALID}, got {value!r}")
        _backends[name] = value


def get_backend(op: str) -> str:
    return _backends[op]


@contextlib.contextmanager
def backend_scope(**per_op: str):
    """Temporarily select backends: ``with backend_scope(attention="triton"): ...``."""
    saved = dict(_backends)
    set_backend(**per_op)
    try:
        yield
    finally:
        _backends.clear()
        _backends.update(saved)


def _interpreter_allowed(choice: str) -> bool:
    """Whether CPU tensors may take the Triton path: only when asked for and interpreting."""
    return choice == "triton" and interpret_mode()


def _resolve(op: str, backend: str | None, why_not) -> str | None:
    """The backend (``auto``/``triton``) that takes the Triton path for this call, or None for the
    reference. ``why_not(allow_interpret)`` returns None when the inputs are eligible, else why not."""
    choice = backend or _backends[op]
    if choice not in _VALID:
        raise ValueError(f"kernels.{op}: backend must be one of {_VALID}, got {choice!r}")
    if choice == "torch" or (choice == "auto" and not AUTO_TAKES_TRITON[op]):
        return None
    reason = "triton is not installed" if not triton_available() else why_not(_interpreter_allowed(choice))
    if reason is None:
        return choice
    if choice == "triton":
        raise KernelUnavailableError(f"kernels.{op}=triton cannot run here: {reason}")
    return None


def _passes_selfcheck(op: str, choice: str, device, run_check) -> bool:
    """Whether the checked (or unchecked, where the check is off) Triton path may run."""
    if not selfcheck.enabled(device):
        return True
    result = run_check()
    if result.passed:
        return True
    if choice == "triton":
        raise KernelSelfCheckError(
            f"kernels.{op}=triton: {result.describe()}. Use kernels.{op}=auto to run the torch reference "
            f"for this configuration, or set {selfcheck.ENV}=0 to skip the check")
    if not result.warned:
        result.warned = True
        warnings.warn(f"kernels.{op}: {result.describe()}; using the torch reference for this "
                      "configuration in this process", KernelSelfCheckWarning, stacklevel=3)
    return False


def attention(q, k, v, mask=None, *, dropout_p: float = 0.0, scale: float | None = None, backend: str | None = None):
    """Scaled dot-product attention; see ``reference.attention_reference`` for the contract."""
    def why_not(allow_interpret: bool):
        try:
            from . import attention_triton
        except ImportError as e:  # the Triton module is not there yet / failed to import
            return f"the Triton attention module could not be imported ({e})"
        return attention_triton.ineligible_reason(q, k, v, mask, dropout_p, allow_interpret=allow_interpret)

    choice = _resolve("attention", backend, why_not)
    if choice and _passes_selfcheck("attention", choice, q.device,
                                    lambda: selfcheck.check_attention(q, k, v, mask, dropout_p)):
        from . import attention_triton  # looked up per call, as the check does
        # `_resolve` has run `ineligible_reason` on these inputs: not again
        return attention_triton.triton_attention(q, k, v, mask, scale=scale, dropout_p=dropout_p, checked=True)
    return attention_reference(q, k, v, mask, dropout_p=dropout_p, scale=scale)


def contrastive_loss(image_feat, text_feat, temp, image_ids=None, *, backend: str | None = None):
    """Symmetric ITC loss; see ``reference.contrastive_loss_reference`` for the contract."""
    def why_not(allow_interpret: bool):
        try:
            from . import contrastive_triton
        except ImportError as e:
            return f"the Triton contrastive module could not be imported ({e})"
        return contrastive_triton.ineligible_reason(image_feat, text_feat, temp, image_ids, allow_interpret=allow_interpret)

    choice = _resolve("contrastive", backend, why_not)
    if choice and _passes_selfcheck("contrastive", choice, image_feat.device,
                                    lambda: selfcheck.check_contrastive(image_feat, text_feat, temp, image_ids)):
        from . import contrastive_triton
        return contrastive_triton.triton_contrastive_loss(image_feat, text_feat, temp, image_ids)
    return contrastive_loss_reference(image_feat, text_feat, temp, image_ids)
