"""The synthetic world: pictures of coloured shapes whose captions, region phrases, questions,
answers and statements are fully determined by the picture, written in the public formats the
sharders and the fine-tuning tasks read (see build.py for the directory layout)."""
from .build import (DEFAULT_IMAGE_SIZE, SIZES, make_world, prepare_world, run_manifest_command,
                    shard_commands, write_class_images)

__all__ = ["make_world", "prepare_world", "run_manifest_command", "shard_commands", "write_class_images",
           "SIZES", "DEFAULT_IMAGE_SIZE"]
