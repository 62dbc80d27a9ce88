"""Fast WaveNet generation: per-level ring buffers of past activations, one new node per level per step.

Level i joins the node ending at time t with the one ending at t - 2**i, so to extend a name by one token
it needs only its input from 2**i steps ago: a ring buffer of 2**i slots per level. Before time 0 the
conv's input is '.' tokens, so every earlier node of a level is the activation the model computes over
an all-'.' window: the buffers start from that, not from zeros (zeros are the classic silent bug).

The two lowest levels see only a handful of tokens, so they are tables rather than matmuls:
- level 0's output depends on a token pair: FoldedConvWaveNet's table of v * v rows; its buffer is the previous token;
- level 1 adds a linear map of two level-0 outputs, each one of those v * v rows: FoldedConvWaveNet's two
  tap tables, and its buffer holds two pair indices. A step then costs two row gathers and a tanh there,
  where a matmul over 2 * h inputs would be the most expensive part of a small model.
Levels 2 .. n_levels - 1 keep activations, block_size - 4 slots in all, each slot the tensor a step computed,
kept by reference with the rows (names) it was computed for. Until time 2**i level i's earlier input is the
all-'.' node, a constant term in its bias, so a level whose dilation exceeds a name's length does half the
work. Batch norm is folded into the weights (FoldedConvWaveNet). A name that stops leaves the rows stepped;
nothing is copied.

Shape legend: b batch (names), h hidden, k taps (0: earlier, 1: later), v vocab, s ring-buffer slots.
"""
import torch

from wavenet_conv.models.activations import tanh_


class IncrementalWaveNet:
    """Steps a FoldedConvWaveNet one token at a time for a batch of names; `step` returns the next logits.

    After n steps, `step(tokens)` equals `folded(history)[:, -1]`, where history holds the n + 1 tokens
    fed so far. init='zeros' starts the activation buffers (levels >= 2) from zeros instead: wrong, kept
    as a negative control for the tests.
    """

    def __init__(self, folded, batch_size, init="boundary"):
        if init not in ("boundary", "zeros"):
            raise ValueError(f"init must be 'boundary' or 'zeros', got {init!r}")
        self.folded = folded
        self.time = 0
        self.pairs = folded.pair_table  # (v v) h: level 0's node of every token pair, row earlier * v + later
        device = self.pairs.device
        self.vocab_size = folded.config.vocab_size
        self.previous = torch.zeros(batch_size, dtype=torch.long, device=device)  # b: '.' before the start
        with torch.no_grad():
            self.slots = []  # level i >= 2: 2**i slots of (its input, the rows it was computed for)
            self.start_terms, self.earlier_weights, self.later_weights = [], [], []
            if len(folded.dilations) < 2:
                return
            hidden = self.pairs.shape[1]
            self.pair_buffer = torch.zeros(2, batch_size, dtype=torch.long, device=device)  # s b: pair ('.', '.')
            boundary = self.level1(self.pair_buffer[0, :1], self.pair_buffer[0, :1])[0]  # h: level 1 over '.'s
            for i, d in enumerate(folded.dilations[2:], start=2):
                earlier_weight, later_weight = folded.weights[i][:, :hidden], folded.weights[i][:, hidden:]  # h h
                start = boundary if init == "boundary" else torch.zeros_like(boundary)
                # before time d the earlier input is the all-'.' node: its term is a constant, folded into the bias
                self.start_terms.append(torch.addmv(folded.biases[i], earlier_weight, start))  # h
                self.earlier_weights.append(earlier_weight.T.contiguous())  # h h, for x @ w
                self.later_weights.append(later_weight.T.contiguous())  # h h
                self.slots.append([None] * d)
                boundary = folded.level(i, boundary, boundary)  # the level's output over all-'.' inputs

    def level1(self, earlier_pairs, later_pairs):
        """Level 1's nodes from the pair indices of their two level-0 children (b, b -> b h)."""
        x = torch.index_select(self.folded.level1_earlier, 0, earlier_pairs)
        return tanh_(x.add_(torch.index_select(self.folded.level1_later, 0, later_pairs)))

    @torch.no_grad()
    def step(self, tokens, rows=None):
        """Feed one token to each name at `rows` (all when None) and get the logits of the token after it (b v).

        `rows` are increasing name indices; a name left out is finished and stays out. Its buffers are no
        longer read, so dropping a name copies nothing: a slot is read through the names it was written for.
        """
        rows = None if rows is None else rows.contiguous()  # the same object when it already is
        pair = gather(self.previous, rows) * self.vocab_size + tokens  # b: level 0's new node, a row of pairs
        overwrite(self.previous, rows, tokens)
        if len(self.folded.dilations) < 2:
            x = torch.index_select(self.pairs, 0, pair)  # b h
        else:
            slot = self.pair_buffer[self.time % 2]  # b: level 0's node from 2 steps ago
            x = self.level1(gather(slot, rows), pair)  # b h
            overwrite(slot, rows, pair)
        for slots, bias, start_term, earlier_weight, later_weight in zip(
                self.slots, self.folded.biases[2:], self.start_terms, self.earlier_weights, self.later_weights):
            slot = self.time % len(slots)  # holds this level's input from 2**i steps ago, once that is >= 0
            z = torch.addmm(bias if self.time >= len(slots) else start_term, x, later_weight)  # b h
            if self.time >= len(slots):
                z.addmm_(gather_written(*slots[slot], rows), earlier_weight)
            slots[slot] = (x, rows)  # no copy: x is a fresh tensor that nothing writes to again
            x = tanh_(z)
        self.time += 1
        return self.folded.logits_from_top(x)  # b v


def gather(buffer, rows):
    """buffer[rows], or the whole buffer when rows is None."""
    return buffer if rows is None else buffer.index_select(0, rows)


def gather_written(values, written_rows, rows):
    """The rows of `values` (written for the names `written_rows`) that belong to the names `rows`.

    Both are increasing name indices, None for every name, and a name still going was going then too.
    """
    if rows is written_rows:
        return values
    positions = rows if written_rows is None else torch.searchsorted(written_rows, rows)
    return values.index_select(0, positions)


def overwrite(buffer, rows, values):
    """buffer[rows] = values, or the whole buffer when rows is None."""
    if rows is None:
        buffer.copy_(values)
    else:
        buffer.index_copy_(0, rows, values)
