"""Self-supervised pretraining of a backbone on unlabelled films (``cxr pretrain``; SimSiam, docs/small-data.md).

:func:`pretrain` writes ``OUT/backbone.safetensors`` (a cxrkit backbone file) that ``cxr train --pretrained``
takes as initialisation.
"""
from cxrkit.training.pretrain.config import PretrainConfig
from cxrkit.training.pretrain.engine import BACKBONE_FILE, PretrainResult, pretrain

__all__ = ["BACKBONE_FILE", "PretrainConfig", "PretrainResult", "pretrain"]
