"""Fast WaveNet generation: per-level ring buffers of past activations, one new node per level per step.

Level i joins the node ending at time t with the one ending at t - 2**i, so to extend a name by one token
it needs only its input from 2**i steps ago: a ring buffer of 2**i slots per level. Before time 0 the
conv's input is '.' tokens, so every earlier node of a level is the activation the model computes over
an all-'.' window: the buffers start from that, not from zeros (zeros are the classic silent bug).

Level 0 sees only two tokens, so its output is tabulated once for every token pair (v * v rows) and its
buffer is the previous token; levels 1 .. n_levels - 1 hold block_size - 2 slots of activations in all.
Batch norm is folded into the weights (FoldedConvWaveNet). A name that stops simply leaves the set of
rows stepped: nothing is copied.

Shape legend: b batch (names), h hidden, k taps (0: earlier, 1: later), v vocab, s ring-buffer slots.
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
    def step(self, tokens, rows=None):
        """Feed one token to each name at `rows` (all when None) and get the logits of the token after it (b v).

        Names left out of `rows` are finished: their buffers are no longer read or written, so dropping a
        name costs nothing, where copying the survivors' buffers (block_size - 1 slots each) would.
        """
        previous = self.previous if rows is None else self.previous.index_select(0, rows)  # b
        x = torch.index_select(self.pairs, 0, previous * self.vocab_size + tokens)  # b h: level 0
        overwrite(self.previous, rows, tokens)
        for i, buffer in enumerate(self.buffers, start=1):
            slot = buffer[self.time % buffer.shape[0]]  # b h: this level's input from 2**i steps ago
            earlier = slot if rows is None else slot.index_select(0, rows)
            pair = torch.cat([earlier, x], dim=-1)  # b (k h): read before the slot is overwritten
            overwrite(slot, rows, x)
            x = tanh_(torch.addmm(self.folded.biases[i], pair, self.folded.weights[i].T))  # b h
        self.time += 1
        return self.folded.logits_from_top(x)  # b v


def overwrite(buffer, rows, values):
    """buffer[rows] = values, or the whole buffer when rows is None."""
    if rows is None:
        buffer.copy_(values)
    else:
        buffer.index_copy_(0, rows, values)
