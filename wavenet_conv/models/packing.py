"""How the conv runs a batch fast and exactly: its items packed back to back in one row.

conv.py states the model: each level is a kernel-2 Conv1d at dilation 2**i over every item, with the all-dot
node as left context. This module computes exactly that, with less work:

- **One packed row.** The valid positions of every item (target not -1; every position without targets) lie
  back to back in one row, held as rows, one per position: x is (n, c), channels last. No right padding is
  computed, and batch norm's statistics are plain sums over the rows.
- **Item starts, exactly** (`causal_conv`). Each level's Conv1d runs once over the whole row (its (1, c, n)
  view), left-padded with `dilation` copies of the all-dot node for the first item. The other items' first
  `dilation` positions would read the item before, so their earlier tap's term is replaced by the earlier tap
  on the all-dot node; no correction is added, so no item's numbers ever depend on another's. The row is
  followed by zero filler up to a multiple of ROW_QUANTUM positions (`conv_over_rows`), so that a few lengths,
  not a new one every batch, reach the convolution kernels.
- **Few long items** (`long_items_conv`): where most items are no longer than the dilation (block 16 and 32's
  dilation 8 on names), the Conv1d runs on the sub-row of the longer items only.
- **Mostly item starts** (`gathered_taps_conv`): where NEAR_START_SHARE of the positions or more read across
  an item start (dilation 4 on names: over half), the Conv1d would compute those outputs only to have them
  replaced, so the level runs its two taps as matmuls instead: the later one at every position, the earlier
  one at the positions some position reads, nothing replaced.
- **Runs of one length** (`length_runs_conv`): in inference over items sorted by length, as evaluation makes
  its batches, the Conv1d runs once per length, on those items as the (b, c, t) batch they are in the row,
  and no output is replaced.
- **Level 0 as a table of token pairs** (`pair_table`, `first_level`): level 0 sees only a pair of tokens, so
  its convolution, batch norm and tanh are computed once for each of the v * v pairs, and the row holds each
  position's pair (`PairRows`). In training the batch norm statistics count each pair once per position that
  holds it (`counted_batch_norm`): the same numbers as over the positions.
- **Level 1 on that table** (`pair_rows_conv`): a convolution is linear in its input, so level 1 runs each tap
  once on the table's v * v rows and each position adds two of the results: its own pair's and the pair
  `dilation` back (names: 729 rows against ~1,840 positions a training batch).

- **Compiled** (`gathered_taps_conv`): under torch.compile every level's two taps run as matmuls, as a graph
  with the row's length as a symbol needs them
  (utils/acceleration.py); the layouts of a compiled model carry their indices (`ItemRow.of(.., compiled=True)`).

**The layout comes with the batch** (`ItemRow`): the batches make each one's row on the CPU, with every index
and decision above (item starts, pack indices, the positions that cross an item start at each dilation, the
length runs), and the model takes it as `layout=`. So the forward and backward issue no op that waits for a
CUDA device (no boolean masks, nonzero, unique or `.item()`; tests/test_sync.py). Without one, the model makes
it itself, reading the batch's values.

Why rows: gathers of table rows, batch norm, the output layer and the item-start fixes all read or write whole
rows, and a run of equally long items is a contiguous (b t c) block whose (b, c, t) view is channels-last,
which `ChannelsLastConv1d` (channels_last.py) convolves in place as NHWC. docs/performance.md gives the
measurements behind each choice.

Shape legend: b batch, t time, n positions of the packed row, m positions of it that read across an item's
start, c channels, h hidden channels, k taps (0: earlier, 1: later), v vocab, p rows of a pair table.
"""
import copy

import torch
from einops import rearrange

from wavenet_conv.data.words import IGNORE_INDEX
from wavenet_conv.models.activations import tanh
from wavenet_conv.models.channels_last import as_rows, as_time

# inference runs the Conv1d once per length only where the row's runs of equally long items average this many
# positions: in an A/B on one thread (AMD EPYC family 25 model 17), runs of 824-2,197 positions made the folded
# form 1.01-1.08x faster and the plain conv 0.95-1.06x, runs of 306 made them 0.82-0.92x
LENGTH_RUN_POSITIONS = 768
# a Conv1d over a row runs on a multiple of this many positions, zero filler after the row's own: oneDNN makes a
# kernel for each new length (~2.8 ms more for a level's forward and backward at 1,830 positions, AMD EPYC 26/2,
# 1 thread) and cuDNN's autotuning times one, and a training batch's row has a new length nearly every step
ROW_QUANTUM = 64
# a level whose earlier tap reads across an item start at this share of the row's positions or more runs its two
# taps as matmuls (`gathered_taps_conv`) instead of the Conv1d with those outputs replaced: on names, 55% of the
# positions at dilation 4 (a level's forward and backward 1.8-1.9 against 2.3 ms on 2 threads, 3.1-3.2 against
# 3.6 on 1) and 28% at dilation 2 (2.1-2.2 against 2.0-2.4 ms on 2 threads, 3.6-3.7 against 3.0 on 1), AMD EPYC 26/2
NEAR_START_SHARE = 0.4


class ItemRow:
    """Items of lengths `lengths` (b) back to back in one row of n positions, taken from a padded (b, time)
    batch: where each item starts, where each position sits, and all that the levels read off that layout,
    computed once when the row is made, on the device of `lengths`.

    The batches make it on the CPU (`of`) and hand it to the model with their tensors (`to`); the forward then
    asks the device nothing, as FlashAttention's varlen kernels take `cu_seqlens` and `max_seqlen` from their
    caller: each shape and branch reads a Python number held here (`n`, `longest`, `in_long_length_runs`,
    `length_runs`, `few_longer_than`), each gather and scatter an index tensor (`pack_index`, `crossing`,
    `long_items_index`), never a boolean mask, nonzero or unique on the device.

    `of` makes the indices of dilations 2, 4, .. below the longest item (`make_level_indices`); a row made
    otherwise, or another dilation, makes them at first use.
    """

    def __init__(self, lengths, time=None):
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        device = lengths.device
        self.lengths = lengths  # b
        self.n = int(lengths.sum())  # positions of the row
        self.longest = int(lengths.max()) if len(lengths) else 0
        self.batch_shape = (len(lengths), self.longest if time is None else time)  # b, t of the padded batch
        self.starts = torch.cumsum(lengths, 0) - lengths  # b: each item's first position in the row
        self.item = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths,
                                            output_size=self.n)  # n
        self.offset = torch.arange(self.n, device=device) - self.starts.index_select(0, self.item)  # n
        b, t = self.batch_shape
        # each position's place in the flattened padded batch; None where the row is the whole batch
        self.pack_index = None if self.n == b * t else self.item * t + self.offset  # n
        runs, items = torch.unique_consecutive(lengths, return_counts=True)
        self.length_runs = list(zip(runs.tolist(), items.tolist()))  # (length, items) of each run, in row order
        self.in_long_length_runs = runs_are_long(lengths, self.n, len(self.length_runs))
        self.indices = {}  # (name, dilation) -> index tensor, made by `crossing` and `long_items_index`
        self.positions_longer = {}  # dilation -> positions in items longer than it
        self.positions_below = {}  # dilation -> positions at offsets below it

    def make_level_indices(self, compiled=False):
        """The indices and decisions of the levels at dilations 4, 8, .. below the longest item (level 0, at
        dilation 1, is a table of token pairs and level 1, at dilation 2, runs on it, reading the row's offsets
        only; at or above the longest no level reads across an item start), each for the path `causal_conv` takes
        there (in a compiled model, `gathered_taps_conv` at every level)."""
        if compiled and self.pack_index is None:  # a row without padding packs by index too: the same graph
            self.pack_index = torch.arange(self.n, device=self.lengths.device)
        dilation = 4
        while dilation < self.longest:
            if compiled:
                self.earlier_reads(dilation)
            elif self.few_longer_than(dilation):
                self.long_items_index(dilation)
            elif self.mostly_near_start(dilation):
                self.earlier_reads(dilation)
            else:
                self.crossing(dilation)
            dilation *= 2
        return self

    @classmethod
    def of(cls, idx, targets=None, compiled=False):
        """The row of a (b t) batch: its valid positions (target not -1), or every position without targets.
        Made on the CPU, where its checks and indices wait for no device; move it with `to`. compiled: with the
        indices a compiled model reads (utils/acceleration.py)."""
        idx = idx.cpu()
        if idx.shape[1] and (idx[:, 0] != 0).any():
            raise ValueError("every item must start with '.' (token 0), as pad_items makes them")
        if targets is None:
            row = cls(torch.full((idx.shape[0],), idx.shape[1]), time=idx.shape[1])
            return row.make_level_indices(compiled)
        valid = targets.cpu() != IGNORE_INDEX  # b t
        lengths = valid.sum(1)  # b: items + 1, the end marker
        if not torch.equal(valid, torch.arange(idx.shape[1]) < lengths[:, None]):
            raise ValueError("targets must be -1 only on right padding, after each item's end marker")
        return cls(lengths, time=idx.shape[1]).make_level_indices(compiled)

    def to(self, device, non_blocking=False):
        """This row on `device`: its index tensors moved in one copy (from pinned memory to a CUDA device, so that
        a non-blocking copy leaves the host free), its Python numbers kept."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device == self.lengths.device:
            return self
        moved = copy.copy(self)
        names = [name for name, value in vars(self).items() if isinstance(value, torch.Tensor)]
        keys = list(self.indices)
        tensors = [getattr(self, name) for name in names] + [self.indices[key] for key in keys]
        flat = torch.cat(tensors)  # every index is 1-d and long
        if device.type == "cuda":
            flat = flat.pin_memory()
        parts = flat.to(device, non_blocking=non_blocking).split([len(tensor) for tensor in tensors])
        for name, part in zip(names, parts):
            setattr(moved, name, part)
        moved.indices = dict(zip(keys, parts[len(names):]))
        moved.positions_longer = dict(self.positions_longer)
        moved.positions_below = dict(self.positions_below)
        return moved

    def check(self, idx):
        """Refuse a row made for another batch (its shape: comparing values would wait for the device)."""
        if tuple(idx.shape) != self.batch_shape:
            raise ValueError(f"the layout is of a {self.batch_shape} batch, not of this {tuple(idx.shape)} one")
        return self

    def pack(self, batch):
        """b t ... -> n ...: the row's positions of a padded batch (its tokens, targets or logits), items back to
        back."""
        flat = rearrange(batch, "b t ... -> (b t) ...")
        return flat if self.pack_index is None else flat.index_select(0, self.pack_index)

    def unpack(self, packed):
        """n v -> b t v: the row's outputs in the batch's layout, 0 on right padding."""
        b, t = self.batch_shape
        if self.pack_index is not None:
            packed = packed.new_zeros(b * t, packed.shape[-1]).index_copy_(0, self.pack_index, packed)  # (b t) v
        return rearrange(packed, "(b t) v -> b t v", b=b)

    def crossing(self, dilation):
        """The positions whose earlier tap at this dilation reads the item before (m); the first item's read
        the left padding, its own all-dot node, already."""
        key = ("crossing", dilation)
        if key not in self.indices:
            position = torch.arange(self.n, device=self.offset.device)
            self.indices[key] = torch.nonzero((self.offset < dilation) & (position >= dilation)).squeeze(1)
        return self.indices[key]

    def long_items_index(self, dilation):
        """What `long_items_conv` gathers at this dilation: the positions at offset < dilation (m), those of items
        longer than it (n_long), and for each position its row of [the former's outputs; the module's outputs
        on the latter's sub-row] (n)."""
        keys = [(name, dilation) for name in ("near_start", "in_long_items", "long_items_source")]
        if keys[0] not in self.indices:
            near_start = self.offset < dilation  # n
            longer = self.lengths.index_select(0, self.item) > dilation  # n
            near_start_positions = torch.nonzero(near_start).squeeze(1)  # m
            # the module's output j is the sub-row's position j + dilation
            source = torch.where(near_start, torch.cumsum(near_start, 0) - 1,
                                 len(near_start_positions) + torch.cumsum(longer, 0) - 1 - dilation)  # n
            self.indices.update(zip(keys, (near_start_positions, torch.nonzero(longer).squeeze(1), source)))
        return [self.indices[key] for key in keys]

    def earlier_reads(self, dilation):
        """What `gathered_taps_conv` gathers at this dilation: the row's position `dilation` back of each position
        at offset >= dilation (m), and for each position its row of [the all-dot node's earlier tap; the earlier
        taps on those m positions] (n): 0 near its item's start."""
        keys = [(name, dilation) for name in ("earlier_reads", "earlier_source")]
        if keys[0] not in self.indices:
            far = self.offset >= dilation  # n
            reads = torch.nonzero(far).squeeze(1) - dilation  # m
            self.indices.update(zip(keys, (reads, torch.where(far, torch.cumsum(far, 0), 0))))
        return [self.indices[key] for key in keys]

    def positions_longer_than(self, dilation):
        """How many of the row's positions lie in items longer than `dilation`."""
        if dilation not in self.positions_longer:
            self.positions_longer[dilation] = int(torch.where(self.lengths > dilation, self.lengths, 0).sum())
        return self.positions_longer[dilation]

    def few_longer_than(self, dilation):
        """Whether under 3/4 of the positions lie in items longer than `dilation`: then the convolution runs on
        those items alone (`causal_conv`)."""
        return 4 * self.positions_longer_than(dilation) < 3 * self.n

    def positions_below_offset(self, dilation):
        """How many of the row's positions lie at offsets below `dilation` in their item: those whose earlier tap
        at that dilation reads the all-dot node."""
        if dilation not in self.positions_below:
            self.positions_below[dilation] = int(self.lengths.clamp(max=dilation).sum())
        return self.positions_below[dilation]

    def mostly_near_start(self, dilation):
        """Whether NEAR_START_SHARE of the positions or more lie at offsets below `dilation`, reading the all-dot
        node with their earlier tap: then the level runs its taps as matmuls (`causal_conv`)."""
        return self.positions_below_offset(dilation) >= NEAR_START_SHARE * self.n


def runs_are_long(lengths, n, runs):
    """Whether items of these lengths (b), n positions in `runs` runs of one length, come shortest first (as
    evaluation sorts them) in runs that average LENGTH_RUN_POSITIONS positions or more: then each run is a
    (b, c, t) batch as it lies in the row."""
    if len(lengths) == 0 or not bool((lengths[1:] >= lengths[:-1]).all()):
        return False
    return n >= LENGTH_RUN_POSITIONS * runs


def packed_row(idx, targets, layout):
    """The row a model runs a batch as: the layout the batch came with (checked by its shape alone), or, made
    here, the one `ItemRow.of` makes, which reads the batch's values (on a CUDA device: waits for it)."""
    if layout is not None:
        return layout.check(idx)
    return ItemRow.of(idx, targets).to(idx.device)


# the row of a pair table for the pair ('.', '.'): the all-dot node, what every item sees before it
ALL_DOT_PAIR = 0


class PairRows:
    """Level 0's nodes at the row's positions, kept as its table over token pairs and each position's pair: the
    rows table[pairs], not gathered, so that level 1 can run its taps on the table (`pair_rows_conv`)."""

    def __init__(self, table, pairs):
        self.table = table  # (v v) h
        self.pairs = pairs  # n

    def rows(self):
        return look_up_pairs(self.table, self.pairs)  # n h


def position_rows(x):
    """n h: x's row of each position, gathered from its pair table where x is PairRows (a one-level model)."""
    return x.rows() if isinstance(x, PairRows) else x


def all_dot_node(x):
    """n c -> c: the node at the row's position 0, the first item's '.': every item's all-dot node (in a pair
    table, the row of ('.', '.'))."""
    return x.table[ALL_DOT_PAIR] if isinstance(x, PairRows) else x[0]


def pair_table(conv, embedding):
    """Level 0's kernel-2 convolution on every token pair: (v v) h, row earlier * v + later. Level 0 sees
    nothing but a pair of tokens, so this table is the whole level (before batch norm): v * v nodes instead of
    one per position, its backward a scatter into v * v rows. Each tap acts on one token's embedding, so the
    table is the earlier tap's v rows plus the later tap's v rows, added in every combination: two v c h
    matmuls, not one over the v * v pairs (forward and backward 0.11 against 0.58 ms at v 27, c 36, h 128, one
    thread, AMD EPYC 26/2). Calling the Conv1d module on the (v v, c, 2) pairs gives the same table but trained
    slower here (oneDNN's backward of that shape)."""
    earlier_tap, later_tap = conv.weight.unbind(2)  # h c, h c
    earlier = embedding.weight @ earlier_tap.T  # v h: the earlier token's term
    later = embedding.weight @ later_tap.T  # v h: the later token's
    if conv.bias is not None:  # the folded form's level 0, batch norm folded in
        later = later + conv.bias
    return rearrange(earlier[:, None] + later[None], "a b h -> (a b) h")  # (v v) h


def pair_index(tokens, row, vocab_size):
    """n -> n: each position's row of the pair table; an item's first position pairs its '.' with itself (the
    dots before the item)."""
    earlier = torch.roll(tokens, 1).index_copy_(0, row.starts, tokens.index_select(0, row.starts))  # n
    return earlier * vocab_size + tokens


def earlier_pairs(pairs, row, dilation):
    """n -> n: each position's pair `dilation` back in its item, or ('.', '.') where that falls before the item
    (the all-dot node). Elementwise on the device, no index of the row's needed."""
    return torch.where(row.offset >= dilation, torch.roll(pairs, dilation), ALL_DOT_PAIR)


def pair_taps_sum(earlier, later, pairs, row, dilation):
    """A kernel-2 level on level 0's nodes from each tap's product with level 0's pair table (earlier, later:
    (v v) h): each position's later-tap row at its own pair plus its earlier-tap row at the pair `dilation` back
    in its item, or at ('.', '.') before it. n -> n h."""
    return look_up_pairs(earlier, earlier_pairs(pairs, row, dilation)) + look_up_pairs(later, pairs)


def look_up_pairs(table, pairs):
    """Each position's row of a table over token pairs, (v v) h, for its pair index (n) -> n h: level 0's
    nodes, or in the folded form a tap of level 1 on them."""
    return table.index_select(0, pairs)


def causal_conv(conv, x, row, left):
    """A kernel-2 Conv1d over the items packed in x (n c, rows, or level 0's PairRows), each item exactly as if
    alone with its left context `left` (c: the all-dot node) in every tap before it: n c -> n h.

    On level 0's pair table (level 1) each tap runs on the table and the positions look up their sums
    (`pair_rows_conv`). On rows:

    The module runs once over the row, left-padded for the first item. An item's first `dilation` positions
    would read their earlier tap from the item before, so their outputs are replaced: the earlier tap on
    `left` plus the later tap on their own input (no correction is added, so no item's numbers ever depend
    on another's, not even by rounding). Where the dilation reaches past every item, every earlier tap reads
    `left`: the later tap alone is a 1x1 convolution, the earlier one a constant in its bias (half the work).
    Where most items are no longer than the dilation (block 16 and 32's dilation 8 on names), nearly every
    output would be replaced, so the module runs on the sub-row of the longer items only (`long_items_conv`).
    Where NEAR_START_SHARE of the positions or more lie within `dilation` of their item's start (dilation 4 on
    names: over half), the two taps run as matmuls and nothing is replaced (`gathered_taps_conv`). In inference
    over items sorted by length in long runs, the module runs once per length, on those items as a batch, and
    nothing is replaced (`length_runs_conv`).
    """
    d = conv.dilation[0]
    earlier_tap, later_tap = conv.weight.unbind(2)  # h c, h c
    if isinstance(x, PairRows):  # level 1, on level 0's nodes as a table of token pairs
        return pair_rows_conv(conv, x, row, earlier_tap, later_tap)
    before_item = earlier_tap @ left  # h: the earlier tap's term wherever it falls before the item
    if conv.bias is not None:
        before_item = before_item + conv.bias
    if row.longest <= d:
        return torch.addmm(before_item, x, later_tap.T)  # n h
    if torch.compiler.is_compiling():
        return gathered_taps_conv(conv, x, row, earlier_tap, later_tap, before_item)
    if not torch.is_grad_enabled() and row.in_long_length_runs:
        return length_runs_conv(conv, x, row, later_tap, before_item)
    if row.few_longer_than(d):
        return long_items_conv(conv, x, row, later_tap, before_item)
    if row.mostly_near_start(d):
        return gathered_taps_conv(conv, x, row, earlier_tap, later_tap, before_item)
    h = conv_over_rows(conv, left.expand(d, -1), x)  # (d + n) c -> n h
    crossing = row.crossing(d)  # m
    # index_select: its backward is an index_add, no sort
    at_starts = torch.addmm(before_item, x.index_select(0, crossing), later_tap.T)  # m h
    return h.index_copy(0, crossing, at_starts)  # n h


def quantized_length(m):
    """The length a Conv1d runs a row of m positions as: m rounded up to a multiple of ROW_QUANTUM."""
    return m + -m % ROW_QUANTUM


def conv_over_rows(conv, *rows):
    """The Conv1d module over rows (m c, the parts given back to back) as one item of m positions: (m - d) h,
    output j at row j + d. Zero rows follow them up to a multiple of ROW_QUANTUM positions, so that the
    convolution kernels made for one length serve the batches after; the outputs that read them are dropped."""
    m = sum(len(part) for part in rows)
    filler = quantized_length(m) - m
    if filler:
        rows = (*rows, rows[0].new_zeros(filler, rows[0].shape[1]))
    stacked = rows[0] if len(rows) == 1 else torch.cat(rows)  # (m + filler) c
    return as_rows(conv(as_time(stacked)))[: m - conv.dilation[0]]  # (m - d) h


def pair_rows_conv(conv, x, row, earlier_tap, later_tap):
    """causal_conv on level 0's nodes held as PairRows: n -> n h. The convolution is linear in its input, so
    each tap runs once on the table's v * v rows, and each position adds two of their rows: the later tap's at
    its own pair, the earlier tap's at the pair `dilation` back in its item, or at ('.', '.') before it. On
    names 729 rows instead of ~1,840 positions a training batch, forward and backward: no convolution over
    the row and nothing replaced (level 0 and level 1 forward and backward 1.8 against 2.8 ms on 2 threads,
    2.6 against 4.2 on 1, AMD EPYC 26/2). FoldedConvWaveNet keeps the two products, made once."""
    earlier = x.table @ earlier_tap.T  # (v v) h: the earlier tap on every pair's node
    later = x.table @ later_tap.T  # (v v) h: the later tap
    if conv.bias is not None:
        later = later + conv.bias
    return pair_taps_sum(earlier, later, x.pairs, row, conv.dilation[0])  # n h


def gathered_taps_conv(conv, x, row, earlier_tap, later_tap, before_item):
    """causal_conv with its taps as matmuls: n c -> n h. Each position's later tap on its own input, plus its
    earlier tap on the position `dilation` back in its item, or `before_item` (with the bias) before the item;
    the earlier tap runs on the m positions that are read, and the outputs gather its rows. The same numbers as
    the Conv1d's up to rounding, with nothing replaced: fewer multiply-adds than the Conv1d's where most outputs
    would be replaced, and the path compiled models take at every level, as inductor's convolution backward
    fixes the row length in the graph (a compilation per batch)."""
    reads, source = row.earlier_reads(conv.dilation[0])  # m, n
    inside = x.index_select(0, reads)  # m c
    inside = inside @ earlier_tap.T if conv.bias is None else torch.addmm(conv.bias, inside, earlier_tap.T)  # m h
    earlier = torch.cat([before_item[None], inside])  # (1 + m) h
    return torch.addmm(earlier.index_select(0, source), x, later_tap.T)  # n h


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
    near_start, in_long_items, source = row.long_items_index(conv.dilation[0])  # m, n_long, n
    at_starts = torch.addmm(before_item, x.index_select(0, near_start), later_tap.T)  # m h
    inside = conv_over_rows(conv, x.index_select(0, in_long_items))  # n_long c -> (n_long - d) h
    # each position's row of [at_starts; inside]: its rank among the positions near a start, or its sub-row output
    return torch.cat([at_starts, inside]).index_select(0, source)  # n h


def first_level(level, embedding, tokens, row, vocab_size):
    """The embedding and level 0 at once: n -> n h, each position's level-0 node (after batch norm and tanh) as
    the table of every token pair's node and each position's pair (PairRows)."""
    pairs = pair_index(tokens, row, vocab_size)  # n: each position's token pair
    table = pair_table(level.conv, embedding)  # (v v) h
    return PairRows(activate_pair_table(level, table, pairs), pairs)  # n h, as (v v) h and n


def activate_pair_table(level, table, pairs):
    """Batch norm and tanh on level 0's table, (v v) h -> (v v) h, as on the positions whose pairs are `pairs`
    (n): in eval mode node by node; in training each row's statistics weigh as many positions as hold it."""
    if not level.training:
        return level.activate(table)
    # index_add_, not bincount, which on a CUDA device reads the largest pair to size its output; counted in
    # float32 at least (bfloat16 counts only to 256 exactly)
    counts = torch.zeros(len(table), dtype=torch.promote_types(table.dtype, torch.float32), device=table.device)
    counts.index_add_(0, pairs, counts.new_ones(1).expand(len(pairs)))  # (v v)
    return tanh(counted_batch_norm(level.bn, table, counts, len(pairs)))


def counted_batch_norm(bn, table, counts, n):
    """Training-mode batch norm over the n positions that hold `counts` (p) copies of the rows of `table`
    (p h): the statistics of those positions (the unbiased variance, as the lecture's), from p rows:
    p h -> p h. n is counts' sum, known on the host."""
    if n < 2:
        raise ValueError(f"batch norm in training needs at least 2 positions; this batch has {n}")
    with torch.autocast(table.device.type, enabled=False):  # the statistics in float32 under bf16 autocast too
        table = table.to(counts.dtype)
        mean = counts @ table / n  # h
        centered = table - mean  # p h
        var = counts @ centered.square() / (n - 1)  # h
        with torch.no_grad():
            bn.running_mean.lerp_(mean, bn.momentum)
            bn.running_var.lerp_(var, bn.momentum)
            bn.num_batches_tracked += 1
        return centered * torch.rsqrt(var + bn.eps) * bn.weight + bn.bias  # p h
