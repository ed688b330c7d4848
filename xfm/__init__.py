"""xfm: X-FM, one language, one vision and one fusion encoder trained together.

``from xfm import XFM`` gives the model; ``XFM.from_pretrained(path)`` loads every supported
weight format. Submodules: ``xfm.kernels``, ``xfm.data_prep``, ``xfm.pretrain``, ``xfm.finetune``.
"""
__version__ = "0.1.0"


def __getattr__(name):
    # lazy, so ``import xfm.data_prep`` does not import torch models
    if name == "XFM":
        from .model import XFM
        return XFM
    if name == "Pipeline":
        from .pipeline import Pipeline
        return Pipeline
    if name in ("ModelConfig", "model_config"):
        from . import model_config as mc
        return getattr(mc, name)
    raise AttributeError(f"module 'xfm' has no attribute {name!r}")
