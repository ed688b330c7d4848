"""Regional compilation: ``torch.compile`` on each repeated block of the three encoders.

Compiling the blocks (``text.encoder.layer.{i}``, ``fusion.encoder.layer.{i}``,
``vision.blocks.{i}``) instead of the whole model keeps compile time short (blocks of one kind
share their compiled code: dynamo treats parameters as inputs) and leaves the embeddings, heads
and objectives (data-dependent indexing, hard-negative draws, Python control flow) eager.

Each block is compiled in place with ``nn.Module.compile``: module objects, parameter names and
state dicts stay as they were, so checkpoints, weight loading, activation checkpointing (the
checkpoint wrapper calls the compiled module) and the fine-tuning pruning (which drops whole
encoders, blocks included) all work unchanged.

ZeRO-3: DeepSpeed's per-module hooks (parameter gathering before each submodule runs) are
excluded from compilation by DeepSpeed itself (``torch.compiler.disable``), so under ZeRO-3 each
block runs as several compiled pieces between the hooks. Marking the blocks as DeepSpeed "leaf
modules" (one gather per block, no hooks inside) would keep them whole, but DeepSpeed reduces a
leaf module's gradients in its backward hook, once per call: X-FM calls the fusion and vision
blocks more than once per step (ITM and MLM, image and MIM), so the gradients would be reduced
before they are complete. The blocks are therefore not marked.

Dropout inside a compiled block draws its masks with the compiler's own random numbers, not
eager PyTorch's: with dropout the compiled step is a different (equally valid) sample of the
masks. ``torch._inductor.config.fallback_random = True`` makes the compiled blocks draw exactly
as eager does (bench/step_speed.py uses it to compare the losses with dropout on).
"""
from __future__ import annotations

import torch
import torch.nn as nn

# Blocks of one class share their compiled code, but each new input condition (text length, grad
# mode, a key mask or none, the 3B rows of ITM) compiles a variant; dynamo's default limit of 8
# variants per code object would silently send the rest back to eager.
RECOMPILE_LIMIT = 64


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder blocks of an ``XFM`` (parts removed by pruning are skipped)."""
    blocks: list[nn.Module] = []
    text = getattr(model, "text", None)
    if text is not None:
        blocks += list(text.encoder.layer)
    fusion = getattr(model, "fusion", None)
    if fusion is not None:
        blocks += list(fusion.encoder.layer)
    vision = getattr(model, "vision", None)
    if vision is not None:
        blocks += list(vision.blocks)
    return blocks


def is_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_blocks(model: nn.Module, **compile_kwargs) -> int:
    """Compile every encoder block of ``model`` in place (idempotent); returns how many.
    ``compile_kwargs`` go to ``torch.compile`` (``mode``, ``dynamic``, ``backend``...)."""
    limit_name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    if getattr(torch._dynamo.config, limit_name) < RECOMPILE_LIMIT:
        setattr(torch._dynamo.config, limit_name, RECOMPILE_LIMIT)
    blocks = repeated_blocks(model)
    for block in blocks:
        if not is_compiled(block):
            block.compile(**compile_kwargs)
    return len(blocks)
