"""wavenet_conv: makemore part 5's WaveNet as the lecture's tree and as a dilated causal Conv1d stack, proven one model.

The public names are imported lazily: importing the package must not import `wavenet_conv.data`, or
`python -m wavenet_conv.data` would print runpy's "found in sys.modules" warning before its one-line errors.
"""
import importlib

_SOURCE_MODULE = {
    "load": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "ModelConfig": "config",
    "ConvWaveNet": "conv",
    "EnsembleWaveNet": "ensemble",
    "Vocab": "data", "bucketed_batches": "data", "build_windows": "data", "encode_items": "data",
    "pad_items": "data", "read_words": "data", "split_words": "data",
    "CheckpointError": "errors", "DatasetError": "errors", "UserError": "errors",
    "FoldedConvWaveNet": "folded",
    "GatedConvWaveNet": "gated_conv", "GatedTreeWaveNet": "gated_tree",
    "TreeWaveNet": "tree",
}

__all__ = sorted(_SOURCE_MODULE)


def __getattr__(name):
    if name not in _SOURCE_MODULE:
        raise AttributeError(f"module 'wavenet_conv' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wavenet_conv.{_SOURCE_MODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
