"""The model configuration shared by the tree and the conv form, of either architecture.

arch "lecture": makemore part 5's model (tree.py, conv.py); n_embd embedding channels, n_hidden channels per level.
arch "gated": WaveNet blocks (gated_tree.py, gated_conv.py); n_embd residual (and skip) channels, n_hidden
filter (and gate) channels per level, dropout on each level's gated output.
"""
from dataclasses import asdict, dataclass

ARCHS = ("lecture", "gated")


@dataclass
class ModelConfig:
    vocab_size: int = 27
    block_size: int = 8  # context length; a power of two, fused pairwise in log2(block_size) levels
    n_embd: int = 24
    n_hidden: int = 128
    arch: str = "lecture"  # lecture: makemore part 5's levels; gated: WaveNet's gated, residual, skip blocks
    dropout: float = 0.0  # gated only: dropout on each level's gated activations (training mode)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_embd", "n_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (the boundary '.' and one character), got {self.vocab_size}")
        if self.block_size < 2 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 2, got {self.block_size}")
        if self.n_embd < 1 or self.n_hidden < 1:
            raise ValueError(f"n_embd and n_hidden must be positive, got {self.n_embd} and {self.n_hidden}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.dropout and self.arch != "gated":
            raise ValueError(f"dropout is an option of the gated arch only, got dropout {self.dropout!r} "
                             f"with arch {self.arch!r}")

    @property
    def n_levels(self):
        return self.block_size.bit_length() - 1

    def to_dict(self):
        return asdict(self)
