"""Fast WaveNet generation: per-level ring buffers of past activations, one new node per level per step.

Level i joins the node ending at time t with the one ending at t - 2**i, so to extend every name by one
token it needs only its input from 2**i steps ago: a ring buffer of 2**i slots per level, (block_size - 1)
slots in all. Before time 0 the conv's input is '.' tokens, so every earlier node of level i is the
activation the model computes for an all-'.' window: the buffers start from that, not from zeros.

Shape legend: b batch (names), c channels, v vocab, s ring-buffer slots.
"""
import torch


class IncrementalWaveNet:
    """Steps a FoldedConvWaveNet one token at a time for a batch of names; `step` returns the next logits.

    After n steps, `step(tokens)` equals `folded(history)[:, -1]`, where history holds the n + 1 tokens
    fed so far. init='zeros' starts the buffers from zeros instead: wrong, kept as a negative control.
    """

    def __init__(self, folded, batch_size, init="boundary"):
        if init not in ("boundary", "zeros"):
            raise ValueError(f"init must be 'boundary' or 'zeros', got {init!r}")
        self.folded = folded
        self.time = 0
        embedding = folded.embedding
        boundary = embedding[0]  # c: the input at every time before the start
        self.buffers = []  # level i: s = 2**i slots of its input, slot t % 2**i holds time t - 2**i
        for i, d in enumerate(folded.dilations):
            start = boundary if init == "boundary" else torch.zeros_like(boundary)
            self.buffers.append(start.expand(d, batch_size, -1).contiguous())  # s b c
            boundary = folded.level(i, boundary, boundary)  # the level's output over all-'.' inputs

    @torch.no_grad()
    def step(self, tokens):
        """Feed one token per name (b) and get the logits for the token after it (b v)."""
        x = self.folded.embedding[tokens]  # b c
        for i, buffer in enumerate(self.buffers):
            slot = buffer[self.time % buffer.shape[0]]  # b c: this level's input from 2**i steps ago
            later = x
            x = self.folded.level(i, slot, later)  # b h; reads the slot before it is overwritten
            slot.copy_(later)
        self.time += 1
        return self.folded.logits_from_top(x)  # b v

    def keep(self, rows):
        """Keep only the names at `rows` (a 1-D index or bool mask), e.g. to drop finished ones."""
        self.buffers = [buffer[:, rows] for buffer in self.buffers]
