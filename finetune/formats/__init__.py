"""Readers of the public downstream data formats: plain records (dataclasses), no tensors.
Every malformed input raises `DataFormatError` naming file, record and field; `check_images`
lists records whose image files are missing. Formats and file names: README.md here."""
from .captions import (CaptionImage, CaptionPair, read_caption_eval, read_caption_train,
                       read_karpathy_caption_eval, read_karpathy_caption_train)
from .errors import DataFormatError, MissingImagesError
from .glue import GLUE_TASKS, GlueExample, GlueTask, glue_files, glue_task, read_glue, read_glue_file
from .grounding import GroundingExample, read_grounding_json, read_refer, read_refer_boxes
from .image_folders import IMG_EXTENSIONS, ImageFolderSet, read_image_folder, read_image_folders
from .images import ImageRef, check_images, resolve
from .karpathy import KarpathyImage, read_karpathy
from .nlvr2 import (NLVR2_EVAL_TEMPLATE, NLVR2_TRAIN_TEMPLATE, Nlvr2Example, parse_label,
                    read_nlvr2)
from .retrieval import (RetrievalEvalSet, RetrievalPair, read_karpathy_retrieval_eval,
                        read_karpathy_retrieval_train, read_retrieval, read_retrieval_eval,
                        read_retrieval_train)
from .safe_pickle import load_plain_pickle
from .vqa import (VqaExample, coco_image_name, read_answer_list, read_vqa_json,
                  read_vqa_official)

__all__ = [
    "DataFormatError", "MissingImagesError", "ImageRef", "resolve", "check_images",
    "RetrievalPair", "RetrievalEvalSet", "read_retrieval", "read_retrieval_train",
    "read_retrieval_eval", "read_karpathy_retrieval_train", "read_karpathy_retrieval_eval",
    "KarpathyImage", "read_karpathy",
    "Nlvr2Example", "read_nlvr2", "parse_label", "NLVR2_EVAL_TEMPLATE", "NLVR2_TRAIN_TEMPLATE",
    "GroundingExample", "read_grounding_json", "read_refer", "read_refer_boxes", "load_plain_pickle",
    "GlueExample", "GlueTask", "GLUE_TASKS", "glue_task", "read_glue", "read_glue_file", "glue_files",
    "ImageFolderSet", "read_image_folder", "read_image_folders", "IMG_EXTENSIONS",
    "VqaExample", "read_vqa_json", "read_vqa_official", "read_answer_list", "coco_image_name",
    "CaptionPair", "CaptionImage", "read_caption_train", "read_caption_eval",
    "read_karpathy_caption_train", "read_karpathy_caption_eval",
]
