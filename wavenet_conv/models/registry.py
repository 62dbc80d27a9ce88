"""The model classes: each architecture has two forms of one model, the lecture's tree and the conv.

A checkpoint names a single model's form as its model_type, "conv" or "tree"; an ensemble's members are of
these (ensemble.py adds "ensemble").
"""
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.models.gated_conv import GatedConvWaveNet
from wavenet_conv.models.gated_tree import GatedTreeWaveNet
from wavenet_conv.models.tree import TreeWaveNet

MODEL_TYPES = ("conv", "tree")
FORMS = {"lecture": (TreeWaveNet, ConvWaveNet), "gated": (GatedTreeWaveNet, GatedConvWaveNet)}


def model_classes(arch):
    """(tree class, conv class) of an architecture: the two forms of one model."""
    return FORMS[arch]


def single_model_type(model):
    """"conv" or "tree": the form of a single model of either architecture (a TypeError for anything else)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "arch", None) in FORMS:
        tree_class, conv_class = model_classes(config.arch)
        if isinstance(model, conv_class):
            return "conv"
        if isinstance(model, tree_class):
            return "tree"
    raise TypeError(f"cannot checkpoint a {type(model).__name__}")


def build_model(model_type, config):
    tree_class, conv_class = model_classes(config.arch)
    return {"conv": conv_class, "tree": tree_class}[model_type](config)
