"""The same model as a dilated causal Conv1d stack, slid over whole items: every position at once.

Level i is a kernel-2 `nn.Conv1d` at dilation 2**i: it fuses the node ending at t with the node ending at
t - 2**i, exactly the tree's pair, so the tree over the window ending at t is computed for every t while each
shared node is computed once.

Every forward packs the batch: the valid positions of every item (target not -1; every position without
targets) back to back in one row, held as rows, one per position: x is (n, c), channels last. No right
padding is computed, batch norm's statistics are plain sums over the rows, and each level's Conv1d runs once
per forward, over the whole row as one item (its (1, c, n) view; or, where few items are longer than its
dilation, over those items' sub-row). In inference over items sorted by length in long runs of one length, as
evaluation makes its batches, the Conv1d runs once per length instead, on those items as the (b, c, t) batch
they are in the row (`length_runs_conv`), and no output is replaced.

Why rows: gathers of table rows, batch norm, the output layer and the item-start fixes all read or write whole
rows, and a run of equally long items is a contiguous (b t c) block whose (b, c, t) view is channels-last,
which `ChannelsLastConv1d` (channels_last.py) convolves in place as NHWC. With activations as (1, c, n) (the
previous layout) that view needed a transposing copy before every convolution and after it. A/B on an AMD
EPYC (family 25, model 17), one thread, the validation split at block 8, two alternating runs (fastest of 5
timed calls each): the folded form 0.54-0.60 -> 0.71-0.78 M predictions/s, the plain conv's eval 0.31 -> 0.40,
its training step (4096 predictions) 94-99 -> 110-124 K/s.

The start of an item, exactly and without padding tokens: an item's input is `[., w1 .. wL]`, so its position 0
holds '.' and at every level its position 0 is the node over an all-'.' window, the all-dot node. The tree's
windows that reach back before the item hold only '.' too, so the left context of every level is that node
(`ConvLevel.left_context`): one vector per level, the same for every item, read at the row's position 0 (the
first item's '.', whose node depends on nothing but dots). The first item reads it from the left padding,
`dilation` copies of it; the others' first `dilation` positions would read the item before, so their earlier
tap's term is replaced by the earlier tap on the all-dot node (`causal_conv`). Time stays L + 1 at every
level, at every block size. (Zeros, what `Conv1d(padding=...)` reads, are the classic bug.)

Batch norm in training mode counts each node at a valid position once: every real node of every item, and
the all-dot node once per item (its position 0, which predicts the item's first character). Right padding
stays out of the statistics and the loss. The variance is the unbiased one, as in the lecture's BatchNorm1d.
In eval mode the running statistics apply, and the conv equals the tree exactly.

Level 0 sees only a pair of tokens, so its convolution is computed once for each of the v * v token pairs and
looked up at every position (`pair_table`, an embedding of pairs): exact, and the cheapest form of the level.
Its batch norm and tanh act on the v * v table too, before the lookup: in eval mode they act node by node; in
training the statistics count each pair once per position that holds it (`ConvLevel.activate_pairs`), the
same numbers as over the positions. A/B on 2 CPU threads against the Conv1d over the row, 16 alternating
rounds of 10 steps of 256 names at block 8: 1.14x faster a step (range 1.00-1.39), at block 32 no difference
(0.99), before batch norm moved onto the table. The levels above are the Conv1d modules themselves.

Shape legend: b batch, t time, n positions of the packed row, m positions of it that read across an item's
start, c channels, h hidden channels, k taps (0: earlier, 1: later), v vocab.
"""
import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wavenet_conv.activations import tanh, tanh_
from wavenet_conv.channels_last import ChannelsLastConv1d, as_rows, as_time
from wavenet_conv.data import IGNORE_INDEX


# inference runs the Conv1d once per length only where the row's runs of equally long items average this many
# positions: in an A/B on one thread (AMD EPYC family 25 model 17), runs of 824-2,197 positions made the folded
# form 1.01-1.08x faster and the plain conv 0.95-1.06x, runs of 306 made them 0.82-0.92x
LENGTH_RUN_POSITIONS = 768


def causal_pad(x, dilation):
    """`dilation` copies of position 0 (the all-dot node) in front of each item of a padded batch (the gated
    arch's layout): b c t -> b c (dilation + t)."""
    return torch.cat([x[:, :, :1].expand(-1, -1, dilation), x], dim=2)


class ItemRow:
    """Items of lengths `lengths` (b) back to back in one row of n positions: where each item starts and where
    each position sits. Every form that packs (training, evaluation, the folded form) reads its layout here.
    `valid` (b t) marks the positions of the padded batch the row holds (None: all of them)."""

    def __init__(self, lengths, valid=None):
        self.lengths = lengths  # b
        self.valid = valid  # b t, or None
        self.starts = torch.cumsum(lengths, 0) - lengths  # b: each item's first position in the row
        self.item = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # n
        self.offset = torch.arange(len(self.item), device=lengths.device) - self.starts[self.item]  # n
        self.longest = int(lengths.max()) if len(lengths) else 0

    @classmethod
    def of(cls, idx, targets=None):
        """The row of a (b t) batch: its valid positions (target not -1), or every position without targets."""
        if idx.shape[1] and (idx[:, 0] != 0).any():
            raise ValueError("every item must start with '.' (token 0), as pad_items makes them")
        if targets is None:
            return cls(torch.full((idx.shape[0],), idx.shape[1], device=idx.device))
        valid = targets != IGNORE_INDEX  # b t
        lengths = valid.sum(1)  # b: items + 1, the end marker
        if not torch.equal(valid, torch.arange(idx.shape[1], device=idx.device) < lengths[:, None]):
            raise ValueError("targets must be -1 only on right padding, after each item's end marker")
        return cls(lengths, valid)

    def pack(self, batch):
        """b t -> n: the row's positions of a padded batch (its tokens or its targets), items back to back."""
        return batch.reshape(-1) if self.valid is None else batch[self.valid]

    def unpack(self, packed):
        """n v -> b t v: the row's outputs in the batch's layout, 0 on right padding."""
        if self.valid is None:
            return rearrange(packed, "(b t) v -> b t v", b=len(self.lengths))
        out = packed.new_zeros(*self.valid.shape, packed.shape[-1])
        out[self.valid] = packed
        return out

    def crossing(self, dilation):
        """The positions whose earlier tap at this dilation reads the item before (m); the first item's read
        the left padding, its own all-dot node, already."""
        position = torch.arange(len(self.offset), device=self.offset.device)
        return torch.nonzero((self.offset < dilation) & (position >= dilation)).squeeze(1)

    def longer_than(self, dilation):
        """Whether each position's item is longer than `dilation` (n): only such items have positions whose
        earlier tap reads inside the item."""
        return self.lengths[self.item] > dilation

    def positions_longer_than(self, dilation):
        """How many of the row's positions lie in items longer than `dilation`."""
        return int(self.lengths[self.lengths > dilation].sum())

    @functools.cached_property
    def length_runs(self):
        """(length, items) for each run of equally long items, in row order."""
        lengths, counts = torch.unique_consecutive(self.lengths, return_counts=True)
        return list(zip(lengths.tolist(), counts.tolist()))

    @functools.cached_property
    def in_long_length_runs(self):
        """Whether the items come shortest first (as evaluation sorts them) in runs of one length that average
        LENGTH_RUN_POSITIONS positions or more: then each run is a (b, c, t) batch as it lies in the row."""
        if len(self.lengths) == 0 or not bool((self.lengths[1:] >= self.lengths[:-1]).all()):
            return False
        return len(self.offset) >= LENGTH_RUN_POSITIONS * len(self.length_runs)

    def few_longer_than(self, dilation):
        """Whether under 3/4 of the positions lie in items longer than `dilation`: then the convolution runs on
        those items alone (`causal_conv`)."""
        return 4 * self.positions_longer_than(dilation) < 3 * len(self.offset)



def all_dot_node(x):
    """n c -> c: the node at the row's position 0, the first item's '.': every item's all-dot node."""
    return x[0]


def pair_table(conv, embedding, vocab_size):
    """Level 0's kernel-2 convolution on every token pair: (v v) h, row earlier * v + later. Level 0 sees
    nothing but a pair of tokens, so this table is the whole level (before batch norm): v * v nodes instead of
    one per position, its backward a scatter into v * v rows. On a pair (time 2, one output) the convolution
    is one matmul with its weight as h (k c); calling the Conv1d module on the (v v, c, 2) pairs instead gives
    the same table but trained slower here (oneDNN's backward of that shape)."""
    vocab = torch.arange(vocab_size, device=embedding.weight.device)
    pairs = torch.cartesian_prod(vocab, vocab)  # (v v) k: earlier, later token
    return F.linear(rearrange(embedding(pairs), "p k c -> p (k c)"), rearrange(conv.weight, "h c k -> h (k c)"),
                    conv.bias)  # (v v) h


def pair_index(tokens, row, vocab_size):
    """n -> n: each position's row of the pair table; an item's first position pairs its '.' with itself (the
    dots before the item)."""
    earlier = torch.roll(tokens, 1).index_copy_(0, row.starts, tokens[row.starts])  # n
    return earlier * vocab_size + tokens


def look_up_pairs(table, pairs):
    """Each position's row of a table over token pairs, (v v) h, for its pair index (n) -> n h: level 0's
    nodes, or in the folded form a tap of level 1 on them."""
    return table.index_select(0, pairs)


def causal_conv(conv, x, row, left):
    """A kernel-2 Conv1d over the items packed in x (n c, rows), each item exactly as if alone with its left
    context `left` (c: the all-dot node) in every tap before it: n c -> n h.

    The module runs once over the row, left-padded for the first item. An item's first `dilation` positions
    would read their earlier tap from the item before, so their outputs are replaced: the earlier tap on
    `left` plus the later tap on their own input (no correction is added, so no item's numbers ever depend
    on another's, not even by rounding). Where the dilation reaches past every item, every earlier tap reads
    `left`: the later tap alone is a 1x1 convolution, the earlier one a constant in its bias (half the work).
    Where most items are no longer than the dilation (block 16 and 32's dilation 8 on names), nearly every
    output would be replaced, so the module runs on the sub-row of the longer items only (`long_items_conv`).
    In inference over items sorted by length in long runs, the module runs once per length, on those items as a
    batch, and nothing is replaced (`length_runs_conv`).
    """
    d = conv.dilation[0]
    earlier_tap, later_tap = conv.weight.unbind(2)  # h c, h c
    before_item = earlier_tap @ left  # h: the earlier tap's term wherever it falls before the item
    if conv.bias is not None:
        before_item = before_item + conv.bias
    if row.longest <= d:
        return torch.addmm(before_item, x, later_tap.T)  # n h
    if not torch.is_grad_enabled() and row.in_long_length_runs:
        return length_runs_conv(conv, x, row, later_tap, before_item)
    if row.few_longer_than(d):
        return long_items_conv(conv, x, row, later_tap, before_item)
    h = as_rows(conv(as_time(torch.cat([left.expand(d, -1), x]))))  # (d + n) c -> n h
    crossing = row.crossing(d)  # m
    # index_select: its backward is an index_add, no sort
    at_starts = torch.addmm(before_item, x.index_select(0, crossing), later_tap.T)  # m h
    return h.index_copy(0, crossing, at_starts)  # n h


def length_runs_conv(conv, x, row, later_tap, before_item):
    """causal_conv in inference over items sorted by length in long runs: n c -> n h. The items of one
    length t lie side by side in the row, so they are a batch (b, c, t) as they stand (a channels-last view of
    their (b t c) rows, which `ChannelsLastConv1d` convolves without copying). The module runs
    on it unpadded, its outputs the offsets d .. t - 1, each reading its own item only; each item's first
    min(d, t) positions get the later tap plus the all-dot term, as at item starts. Nothing is computed twice or
    thrown away: the fewest multiply-adds of any exact form of the level (on names the packed row replaces a
    quarter of its outputs at dilation 2 and over half at dilation 4). Not with autograd: oneDNN's backward
    over the many small batches of a training step ran at 0.70-0.96x the row's."""
    d = conv.dilation[0]
    out = x.new_empty(len(x), conv.out_channels)
    start = 0
    for length, items in row.length_runs:
        run = slice(start, start + items * length)
        inputs = rearrange(x[run], "(b t) c -> b t c", t=length)  # a view of the rows
        outputs = rearrange(out[run], "(b t) h -> b t h", t=length)  # a view to write into
        if length > d:
            outputs[:, d:] = rearrange(conv(rearrange(inputs, "b t c -> b c t")), "b h t -> b t h")  # b (t - d) h
        first = min(d, length)
        at_starts = torch.addmm(before_item, rearrange(inputs[:, :first], "b t c -> (b t) c"), later_tap.T)
        outputs[:, :first] = rearrange(at_starts, "(b t) h -> b t h", t=first)  # b first h
        start = run.stop
    return out


def long_items_conv(conv, x, row, later_tap, before_item):
    """causal_conv where few items are longer than the dilation d: n c -> n h. Every position at offset < d
    reads the all-dot node with its earlier tap (the later tap plus `before_item`, as at item starts); the
    others, each in an item longer than d, come from the module run over the sub-row of those items, unpadded:
    its output j is the sub-row's position j + d, kept only where that position is at offset >= d."""
    d = conv.dilation[0]
    at_start = row.offset < d  # n
    longer = row.longer_than(d)  # n
    starts = torch.nonzero(at_start).squeeze(1)  # m
    at_starts = torch.addmm(before_item, x.index_select(0, starts), later_tap.T)  # m h
    inside = as_rows(conv(as_time(x.index_select(0, torch.nonzero(longer).squeeze(1)))))  # n_long c -> (n_long - d) h
    # each position's row of [at_starts; inside]: its rank among the item starts, or its sub-row output
    source = torch.where(at_start, torch.cumsum(at_start, 0) - 1, len(starts) + torch.cumsum(longer, 0) - 1 - d)
    return torch.cat([at_starts, inside]).index_select(0, source)  # n h


class ConvLevel(nn.Module):
    """One tree level: a kernel-2 causal convolution at dilation 2**level, batch norm, tanh."""

    def __init__(self, in_channels, hidden, dilation):
        super().__init__()
        self.conv = ChannelsLastConv1d(in_channels, hidden, kernel_size=2, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(hidden)

    @property
    def dilation(self):
        return self.conv.dilation[0]

    def forward(self, x, row):
        """n c -> n h over the items of a packed row."""
        return self.activate(causal_conv(self.conv, x, row, self.left_context(x, row)))  # n h

    def activate(self, h):
        h = self.batch_norm(h)  # n h
        return tanh(h) if torch.is_grad_enabled() else tanh_(h)  # in inference, in place: h is batch norm's own

    def activate_pairs(self, table, pairs):
        """Batch norm and tanh on level 0's table, (v v) h -> (v v) h, as on the positions whose pairs are `pairs`
        (n): in eval mode node by node; in training each row's statistics weigh as many positions as hold it."""
        if not self.training:
            return self.activate(table)
        counts = torch.bincount(pairs, minlength=len(table)).to(table.dtype)  # (v v)
        return tanh(self.counted_batch_norm(table, counts))

    def left_context(self, x, row):
        """What each item sees before it, c: the all-dot node. (Zeros, what `Conv1d(padding=...)` reads, are the
        classic bug.)"""
        return all_dot_node(x)

    def batch_norm(self, h):
        """n h -> n h: the running statistics in eval mode; in training the batch's, over every position of
        the row (it holds only valid positions).

        The lecture normalizes with the unbiased variance, torch's fused kernel with the biased one (m = var_b):
        (h - mean) / sqrt(var_b * n / (n - 1) + eps) = sqrt((n - 1) / n) * (h - mean) / sqrt(var_b + eps'),
        with eps' = eps * (n - 1) / n. So the kernel runs with that eps and gamma scaled by sqrt((n - 1) / n);
        its running variance is the unbiased one already.
        """
        bn = self.bn
        if not self.training:
            return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
        n = h.shape[0]
        if n < 2:
            raise ValueError("batch norm in training needs at least 2 positions; this batch has 1")
        shrink = (n - 1) / n
        with torch.no_grad():
            bn.num_batches_tracked += 1
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight * shrink**0.5, bn.bias, training=True,
                            momentum=bn.momentum, eps=bn.eps * shrink)

    def counted_batch_norm(self, table, counts):
        """Training-mode batch norm over positions that hold `counts` (p) copies of the rows of `table` (p h):
        the statistics of those positions (the unbiased variance, as the lecture's), from p rows: p h -> p h."""
        bn, n = self.bn, counts.sum()
        if n < 2:
            raise ValueError(f"batch norm in training needs at least 2 positions; this batch has {int(n)}")
        mean = counts @ table / n  # h
        centered = table - mean  # p h
        var = counts @ centered.square() / (n - 1)  # h
        with torch.no_grad():
            bn.running_mean.lerp_(mean, bn.momentum)
            bn.running_var.lerp_(var, bn.momentum)
            bn.num_batches_tracked += 1
        return centered * torch.rsqrt(var + bn.eps) * bn.weight + bn.bias  # p h


class ConvWaveNet(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        widths = [config.n_embd] + [config.n_hidden] * config.n_levels
        self.levels = nn.ModuleList(
            ConvLevel(widths[i], config.n_hidden, dilation=2**i) for i in range(config.n_levels)
        )
        self.head = nn.Linear(config.n_hidden, config.vocab_size)  # position-wise output layer

    def forward(self, idx, targets=None):
        """idx (b t): items that start with '.', as pad_items makes them; targets (b t), -1 on right padding.

        Logits (b t v) at every position (0 on right padding); logits[:, t] sees only
        idx[:, t - block_size + 1 .. t], with the item's first node standing for the dots before it. The
        batch's valid positions (all of them without targets) run packed in one row, through every level.
        """
        row = ItemRow.of(idx, targets)
        tokens = row.pack(idx)  # n: items back to back, each from its '.'
        pairs = pair_index(tokens, row, self.config.vocab_size)  # n: each position's token pair
        first, *above = self.levels
        table = pair_table(first.conv, self.embedding, self.config.vocab_size)  # (v v) h
        x = look_up_pairs(first.activate_pairs(table, pairs), pairs)  # n h: level 0's node at every position
        for level in above:
            x = level(x, row)  # n c -> n h
        packed_logits = self.head(x)  # n v
        loss = None
        if targets is not None:
            loss = F.cross_entropy(packed_logits, row.pack(targets))
        return row.unpack(packed_logits), loss

    @classmethod
    def from_tree(cls, tree):
        """The conv form of a TreeWaveNet: same weights and batch-norm state, exactly."""
        conv = cls(tree.config).to(device=tree.head.weight.device, dtype=tree.head.weight.dtype)
        with torch.no_grad():
            conv.embedding.weight.copy_(tree.embedding.weight)
            for level, (linear, bn) in zip(conv.levels, tree.levels):
                # the tree concatenates a pair time-major, earlier first: rows of its weight are (k c)
                level.conv.weight.copy_(rearrange(linear.weight, "(k c) h -> h c k", k=2))
                level.bn.weight.copy_(bn.gamma)
                level.bn.bias.copy_(bn.beta)
                level.bn.running_mean.copy_(bn.running_mean)
                level.bn.running_var.copy_(bn.running_var)
                level.bn.eps, level.bn.momentum = bn.eps, bn.momentum
            conv.head.weight.copy_(rearrange(tree.head.weight, "h v -> v h"))
            conv.head.bias.copy_(tree.head.bias)
        return conv.train(tree.training)

    def to_tree(self):
        """The tree form of this model: the exact inverse of from_tree."""
        from wavenet_conv.tree import TreeWaveNet

        tree = TreeWaveNet(self.config).to(device=self.head.weight.device, dtype=self.head.weight.dtype)
        with torch.no_grad():
            tree.embedding.weight.copy_(self.embedding.weight)
            for level, (linear, bn) in zip(self.levels, tree.levels):
                linear.weight.copy_(rearrange(level.conv.weight, "h c k -> (k c) h"))
                bn.gamma.copy_(level.bn.weight)
                bn.beta.copy_(level.bn.bias)
                bn.running_mean.copy_(level.bn.running_mean)
                bn.running_var.copy_(level.bn.running_var)
                bn.eps, bn.momentum = level.bn.eps, level.bn.momentum
            tree.head.weight.copy_(rearrange(self.head.weight, "v h -> h v"))
            tree.head.bias.copy_(self.head.bias)
        return tree.train(self.training)

