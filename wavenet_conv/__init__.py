"""wavenet_conv: makemore part 5's WaveNet as the lecture's tree and as a dilated causal Conv1d stack, proven one model.

    wavenet_conv/models/     the tree, the conv (conv.py: the model; packing.py: how it runs fast), their
                             folded, gated, ensemble and cached-sampling forms, checkpoints
    wavenet_conv/data/       items, vocabulary, splits
    wavenet_conv/training/   the training loop, batches, recipes, distillation, ensembles of runs
    wavenet_conv/inference/  loss over whole splits, sampling
    wavenet_conv/train.py, sample.py, evaluate.py, sweep.py: the commands (python -m wavenet_conv.train ...)

The public names are imported on first use, so that `import wavenet_conv` stays light and
`python -m wavenet_conv.<command>` imports only what that command needs.
"""
from importlib import import_module as _import_module

_SOURCE_MODULE = {
    "load": "models.checkpoint", "load_checkpoint": "models.checkpoint", "save_checkpoint": "models.checkpoint",
    "ModelConfig": "models.config",
    "ConvWaveNet": "models.conv",
    "EnsembleWaveNet": "models.ensemble",
    "FoldedConvWaveNet": "models.folded",
    "GatedConvWaveNet": "models.gated_conv", "GatedTreeWaveNet": "models.gated_tree",
    "TreeWaveNet": "models.tree",
    "Vocab": "data.words", "bucketed_batches": "data.words", "build_windows": "data.words",
    "encode_items": "data.words", "pad_items": "data.words", "read_words": "data.words", "split_words": "data.words",
    "CheckpointError": "utils.errors", "DatasetError": "utils.errors", "UserError": "utils.errors",
}

__all__ = sorted(_SOURCE_MODULE)


def __getattr__(name):
    if name not in _SOURCE_MODULE:
        raise AttributeError(f"module 'wavenet_conv' has no attribute {name!r}")
    value = getattr(_import_module(f"wavenet_conv.{_SOURCE_MODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
