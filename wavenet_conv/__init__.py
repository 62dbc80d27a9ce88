"""wavenet_conv: makemore part 5's WaveNet as the lecture's tree and as a dilated causal Conv1d stack, proven one model."""
from wavenet_conv.checkpoint import load, load_checkpoint, save_checkpoint
from wavenet_conv.config import ModelConfig
from wavenet_conv.conv import ConvWaveNet
from wavenet_conv.data import (
    Vocab,
    bucketed_batches,
    build_windows,
    encode_items,
    pad_items,
    read_words,
    split_words,
)
from wavenet_conv.errors import CheckpointError, DatasetError, UserError
from wavenet_conv.folded import FoldedConvWaveNet
from wavenet_conv.tree import TreeWaveNet

__all__ = [
    "CheckpointError", "ConvWaveNet", "DatasetError", "FoldedConvWaveNet", "ModelConfig", "TreeWaveNet",
    "UserError", "Vocab", "bucketed_batches", "build_windows", "encode_items", "load", "load_checkpoint",
    "pad_items", "read_words", "save_checkpoint", "split_words",
]
