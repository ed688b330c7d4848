"""Per-stream composers: encode each input once, then sum nothing - return the named losses.

``STREAMS`` is the one list of stream names (the pretraining config, loaders and logs take it
from here); ``STREAM_LOSSES[stream](model, batch, ctx) -> dict[str, Tensor]`` (scalars). The engine weighs
and sums them. Loss names: pairs ``itc itm mlm mim``; regions ``region_itc region_itm
region_mlm bbox_l1 bbox_giou``; text ``text_mlm``; images ``mim``. ``mim`` appears only when
``config.mim`` is on; the images stream has no other objective and refuses to run without it.
"""
from __future__ import annotations

import torch

from .losses import (LossContext, bbox_losses, encode_text_for_fusion, fusion_mlm_loss, itc_loss,
                     itm_loss, mim_loss, text_mlm_loss)

# the data streams, in the order a step runs them by default (also the order of the per-stream
# sampling salts: changing it changes which hard negatives a seed draws)
STREAMS = ("text", "regions", "images", "pairs")

# the batch field whose first dimension counts a stream's samples (regions: region rows)
BATCH_ROWS = {"text": "text_ids_masked", "regions": "text_ids", "images": "image", "pairs": "image"}

REQUIRED = {
    "pairs": ("image", "text_ids", "text_mask", "text_ids_masked", "mlm_labels", "image_ids", "mim_mask"),
    "regions": ("image", "text_ids", "text_mask", "text_ids_masked", "mlm_labels", "region_image_index",
                "region_patch_mask", "region_boxes", "is_whole_image"),
    "text": ("text_ids_masked", "text_mask", "mlm_labels"),
    "images": ("image", "mim_mask"),
}


def _check(stream: str, batch: dict, model=None) -> None:
    missing = [k for k in REQUIRED[stream] if k not in batch]
    if stream in ("pairs", "images") and model is not None and not model.config.mim and "mim_mask" in missing:
        missing.remove("mim_mask")
    if missing:
        raise KeyError(f"{stream} batch is missing field(s) {missing}; it has {sorted(batch)}")


def pairs_losses(model, batch: dict, ctx: LossContext | None = None) -> dict:
    """Image-text pairs: ITC (soft targets over repeated image ids), ITM with hard negatives,
    fusion MLM, and MIM when ``config.mim``."""
    ctx = ctx or LossContext()
    _check("pairs", batch, model)
    image_states = model.encode_image(batch["image"])
    text_states = model.encode_text(batch["text_ids"], batch["text_mask"])
    image_feat, text_feat = model.features(image_states, text_states)
    temp = model.heads.temp()
    image_ids = batch["image_ids"]
    losses = {
        "itc": itc_loss(model, image_feat, text_feat, temp, ctx, image_ids),
        "itm": itm_loss(model, image_states, None, text_states, batch["text_mask"], image_feat,
                        text_feat, temp, ctx, image_ids, batch.get("image_ids_host")),
    }
    masked = encode_text_for_fusion(model, batch["text_ids_masked"], batch["text_mask"])
    losses["mlm"] = fusion_mlm_loss(model, image_states, None, masked, batch["text_mask"], batch["mlm_labels"])
    if model.config.mim:
        losses["mim"] = mim_loss(model, batch["image"], batch["mim_mask"], image_states)
    return losses


def regions_losses(model, batch: dict, ctx: LossContext | None = None) -> dict:
    """Regions: ITC/ITM/fusion-MLM on box-pooled, box-restricted region states, and box
    regression from (full image, phrase) for rows that are not whole-image captions."""
    ctx = ctx or LossContext()
    _check("regions", batch)
    index = batch["region_image_index"]
    image_states, region_states, region_atts = model.encode_regions(
        batch["image"], index, batch["region_patch_mask"], return_image_states=True)
    text_states = model.encode_text(batch["text_ids"], batch["text_mask"])
    region_feat, text_feat = model.features(region_states, text_states)
    temp = model.heads.temp()
    losses = {
        "region_itc": itc_loss(model, region_feat, text_feat, temp, ctx),
        "region_itm": itm_loss(model, region_states, region_atts, text_states, batch["text_mask"],
                               region_feat, text_feat, temp, ctx),
    }
    masked = encode_text_for_fusion(model, batch["text_ids_masked"], batch["text_mask"])
    losses["region_mlm"] = fusion_mlm_loss(model, region_states, region_atts, masked,
                                           batch["text_mask"], batch["mlm_labels"])
    losses["bbox_l1"], losses["bbox_giou"] = bbox_losses(
        model, image_states[index], text_states, batch["text_mask"], batch["region_boxes"],
        batch["is_whole_image"])
    return losses


def text_losses(model, batch: dict, ctx: LossContext | None = None) -> dict:
    """Text corpus: MLM on the language encoder."""
    _check("text", batch)
    return {"text_mlm": text_mlm_loss(model, batch["text_ids_masked"], batch["text_mask"], batch["mlm_labels"])}


def images_losses(model, batch: dict, ctx: LossContext | None = None) -> dict:
    """Images only: MIM against the same encoder's detached output on the unmasked image."""
    if not model.config.mim:
        raise ValueError("the images stream has only the MIM objective, but config.mim is false: "
                         "drop the images stream from the mix for a no-MIM ablation")
    _check("images", batch)
    with torch.no_grad():  # the target only: no graph needed
        target = model.encode_image(batch["image"])
    return {"mim": mim_loss(model, batch["image"], batch["mim_mask"], target)}


STREAM_LOSSES = {
    "text": text_losses,
    "regions": regions_losses,
    "images": images_losses,
    "pairs": pairs_losses,
}


def batch_rows(stream: str, batch: dict) -> int:
    """How many samples (regions: region rows) a stream's batch holds."""
    return int(batch[BATCH_ROWS[stream]].shape[0])
