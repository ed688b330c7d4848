"""X-FM pretraining objectives: one function per objective, one composer per data stream."""
from .losses import (IGNORE_INDEX, LossContext, bbox_losses, encode_text_for_fusion, fusion_mlm_loss,
                     fusion_text_input, giou_loss, itc_loss, itm_loss, masked_lm_loss, mim_loss,
                     text_mlm_loss)
from .streams import BATCH_ROWS, STREAM_LOSSES, STREAMS, batch_rows, images_losses, pairs_losses, regions_losses, text_losses

__all__ = [
    "BATCH_ROWS", "IGNORE_INDEX", "LossContext", "STREAMS", "STREAM_LOSSES", "batch_rows", "bbox_losses", "encode_text_for_fusion",
    "fusion_mlm_loss", "fusion_text_input", "giou_loss", "images_losses", "itc_loss", "itm_loss",
    "masked_lm_loss", "mim_loss", "pairs_losses", "regions_losses", "text_losses", "text_mlm_loss",
]
