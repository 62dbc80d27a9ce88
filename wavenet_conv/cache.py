"""Fast WaveNet generation: per-level ring buffers of past activations, one new node per level per step.

Level i joins the node ending at time t with the one ending at t - 2**i, so to extend every name by one
token it needs only its input from 2**i steps ago: a ring buffer of 2**i slots per level, (block_size - 1)
slots in all. Before time 0 the conv's input is '.' tokens, so every earlier node of level i is the
activation the model computes for an all-'.' window: the buffers start from that, not from zeros.

Level 0 sees only two tokens, so its output is tabulated once for every token pair (v * v rows) and its
"buffer" is the previous token. Batch norm is folded into the weights (FoldedConvWaveNet).

Shape legend: b batch (names), c channels, h hidden, v vocab, s ring-buffer slots.
"""
import torch


def tanh_(x):
    """tanh in place; on the CPU as 2 * sigmoid(2x) - 1, equal to rounding and about twice as fast there."""
    if x.device.type != "cpu":
        return x.tanh_()
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


class IncrementalWaveNet:
    """Steps a FoldedConvWaveNet one token at a time for a batch of names; `step` returns the next logits.

    After n steps, `step(tokens)` equals `folded(history)[:, -1]`, where history holds the n + 1 tokens
    fed so far. init='zeros' starts the activation buffers (levels >= 1) from zeros instead: wrong, kept
    as a negative control for the tests.
    """

    def __init__(self, folded, batch_size, init="boundary"):
        if init not in ("boundary", "zeros"):
            raise ValueError(f"init must be 'boundary' or 'zeros', got {init!r}")
        self.folded = folded
        self.time = 0
        embedding = folded.embedding
        vocab_size = embedding.shape[0]
        with torch.no_grad():
            tokens = torch.arange(vocab_size, device=embedding.device)
            earlier, later = torch.cartesian_prod(tokens, tokens).unbind(1)  # (v v), (v v)
            self.pairs = folded.level(0, embedding[earlier], embedding[later])  # (v v) h, row earlier * v + later
        self.vocab_size = vocab_size
        self.previous = torch.zeros(batch_size, dtype=torch.long, device=embedding.device)  # b: '.' before the start
        self.buffers = []  # level i >= 1: s = 2**i slots of its input; slot t % 2**i holds time t - 2**i
        boundary = self.pairs[0]  # h: level 0's output over '.', '.'
        for i, d in enumerate(folded.dilations[1:], start=1):
            start = boundary if init == "boundary" else torch.zeros_like(boundary)
            self.buffers.append(start.expand(d, batch_size, -1).contiguous())  # s b h
            boundary = folded.level(i, boundary, boundary)  # the level's output over all-'.' inputs

    @torch.no_grad()
    def step(self, tokens):
        """Feed one token per name (b) and get the logits for the token after it (b v)."""
        x = torch.index_select(self.pairs, 0, self.previous * self.vocab_size + tokens)  # b h: level 0
        self.previous = tokens
        for i, buffer in enumerate(self.buffers, start=1):
            slot = buffer[self.time % buffer.shape[0]]  # b h: this level's input from 2**i steps ago
            pair = torch.cat([slot, x], dim=-1)  # b (k h): read before the slot is overwritten
            slot.copy_(x)
            x = tanh_(torch.addmm(self.folded.biases[i], pair, self.folded.weights[i].T))  # b h
        self.time += 1
        return self.folded.logits_from_top(x)  # b v

    def keep(self, rows):
        """Keep only the names at `rows` (a 1-D index), e.g. to drop finished ones."""
        self.previous = torch.index_select(self.previous, 0, rows)
        self.buffers = [torch.index_select(buffer, 1, rows) for buffer in self.buffers]
