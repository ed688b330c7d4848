"""Hard-negative sampling for image-text matching (ITM).

For every pair in the local batch the ITM objective needs one negative image (for the text) and one
negative text (for the image), drawn with probability proportional to softmax(similarity / temp)
over the *other* samples, so that confusable pairs are chosen more often (X-VLM / X-FM recipe:
``softmax(sim) + 1e-5`` with the positives zeroed).

The original code drew these with a Python loop and one ``.item()`` per row (a host sync per
sample); here each direction is one batched ``torch.multinomial`` call on the device.
"""
from __future__ import annotations

import torch

__all__ = ["NoNegativeError", "positive_mask", "negative_weights", "sample_hard_negatives"]

# Added to every softmax weight so that a row whose softmax underflows still samples among its
# negatives (same constant as the official code).
WEIGHT_FLOOR = 1e-5


class NoNegativeError(ValueError):
    """A row of the batch has no negative at all (every sample shows the same image)."""


def positive_mask(batch_size: int, image_ids: torch.Tensor | None, device) -> torch.Tensor:
    """(B,B) bool: True where column j is a positive for row i.

    Without ids only the diagonal is positive. With ids, every sample of the same picture is a
    positive too (a picture with several captions must not be its own caption's negative).
    """
    if image_ids is None:
        return torch.eye(batch_size, dtype=torch.bool, device=device)
    ids = image_ids.to(device).reshape(-1)
    if ids.numel() != batch_size:
        raise ValueError(
            f"sample_hard_negatives: image_ids has {ids.numel()} entries but the similarity "
            f"matrices are {batch_size}x{batch_size}")
    return ids[:, None] == ids[None, :]


def negative_weights(sim: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """softmax(sim) + floor over each row, zero on positives (float32 whatever the input dtype)."""
    weights = torch.softmax(sim.float(), dim=1) + WEIGHT_FLOOR
    return weights.masked_fill(positives, 0.0)


def _check_square(name: str, sim: torch.Tensor) -> int:
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sample_hard_negatives: {name} must be a square (B,B) matrix, "
                         f"got shape {tuple(sim.shape)}")
    return sim.shape[0]


@torch.no_grad()
def sample_hard_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor,
                          image_ids: torch.Tensor | None = None,
                          generator: torch.Generator | None = None,
                          host_image_ids: torch.Tensor | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one hard negative per sample in each direction.

    Args:
        sim_i2t: (B,B) logits (similarity / temperature); row i = image i against every text.
        sim_t2i: (B,B) logits; row i = text i against every image.
        image_ids: optional (B,) ids; samples sharing an id show the same picture and are never
            negatives of one another.
        generator: optional ``torch.Generator`` on the logits' device (reproducible draws).
        host_image_ids: the same ids kept on the host (``to_device`` keeps ``image_ids_host``
            beside ids it moves to an accelerator): the no-negative check then reads no device
            value, so the draw needs no host synchronisation.

    Returns:
        ``(neg_image_idx, neg_text_idx)``, both (B,) long on the logits' device:
        ``neg_image_idx[i]`` is the negative image for text i, ``neg_text_idx[i]`` the negative
        text for image i.

    Raises:
        NoNegativeError: when some row has no negative (batch of one, or every sample of the
            batch shows the same picture). There is no sensible fallback - any choice would be a
            positive labelled "no match" - so the caller must build batches with at least two
            distinct pictures (the ITM objective can skip such a batch deliberately).
    """
    batch = _check_square("sim_i2t", sim_i2t)
    if _check_square("sim_t2i", sim_t2i) != batch:
        raise ValueError(f"sample_hard_negatives: sim_i2t is {tuple(sim_i2t.shape)} but sim_t2i is "
                         f"{tuple(sim_t2i.shape)}")
    positives = positive_mask(batch, image_ids, sim_i2t.device)
    # A clear error instead of torch.multinomial's "invalid multinomial distribution". Without
    # ids only a batch of one lacks negatives (known from the shape: no device read); with ids
    # the check reads them where they are, so it costs a host synchronisation only when the ids
    # live on an accelerator (callers that want none pass ids kept on the host).
    if image_ids is None:
        no_negative = [0] if batch < 2 else []
    else:
        if host_image_ids is not None:
            host_pos = positive_mask(batch, host_image_ids, "cpu")
        elif image_ids.device.type == "cpu" and positives.device.type == "cpu":
            host_pos = positives
        else:
            host_pos = positive_mask(batch, image_ids.cpu(), "cpu")
        has_negative = (~host_pos).any(dim=1)
        no_negative = [] if bool(has_negative.all()) else (~has_negative).nonzero().flatten().tolist()
    if no_negative:
        bad = no_negative
        raise NoNegativeError(
            f"sample_hard_negatives: {len(bad)} of {batch} samples have no negative "
            f"(rows {bad[:8]}{'...' if len(bad) > 8 else ''}): every other sample in the batch "
            f"shows the same image id; ITM needs at least two distinct images per batch")
    # text i -> negative image, image i -> negative text; positives is symmetric so one mask
    # serves both directions
    neg_image_idx = torch.multinomial(negative_weights(sim_t2i, positives), 1,
                                      generator=generator).squeeze(1)
    neg_text_idx = torch.multinomial(negative_weights(sim_i2t, positives), 1,
                                     generator=generator).squeeze(1)
    return neg_image_idx, neg_text_idx
