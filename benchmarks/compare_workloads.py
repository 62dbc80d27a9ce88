"""The timed work of benchmarks/compare.py: each form's model and batches, built before any timing starts.

A workload is one timed call: a fixed set of predictions (the validation split for eval, a fixed slice of
the training split for train) in batches of about `batch_size` predictions, with everything a step needs
(window tensors, padded length-bucketed batches and their packed rows' layouts, as the trainer's and the
evaluator's batches carry them) already built and on the device.

Forms (all hold the same weights, checked by compare.py before timing):
- loop: the lecture's tree, one window at a time (eval only: one window is no batch for batch norm);
- tree: the lecture's tree over batches of windows;
- conv: ConvWaveNet, level 0 a table of token pairs and its nn.Conv1d levels above, over length-bucketed
  batches of whole items (padded on the right; the model packs each batch's valid positions into one row, in
  eval and training alike): the model that trains;
- conv_folded: FoldedConvWaveNet, the inference form (batch norm folded into the convolutions, levels 0 and 1
  tables of token pairs built once) over the same batches, packed the same way.
- conv_compiled, conv_folded_compiled (compare.py --compile): the same two through torch.compile
  (utils/acceleration.py: dynamic shapes, each level's taps as matmuls), compiled before any timing and checked
  against the eager form on every batch.

Multiply-adds (MACs) are counted from the shapes each form really computes (each item's all-dot position and
the item-start replacements included), matmuls and convolutions only: batch norm, tanh and the loss are elementwise.
Shape legend: n examples, b batch, t time.
"""
import copy
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from wavenet_conv.data.words import IGNORE_INDEX, bucketed_batches, build_windows, pad_items
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.models.folded import FoldedConvWaveNet
from wavenet_conv.models.packing import ItemRow, quantized_length
from wavenet_conv.utils.acceleration import compilations, compile_model

FORMS = ("loop", "tree", "conv", "conv_folded")
CONV_FORMS = ("conv", "conv_folded")
COMPILED = "_compiled"  # the suffix of a conv form's name through torch.compile
COMPILED_FORMS = tuple(form + COMPILED for form in CONV_FORMS)
MODES = ("eval", "train")
TRAINABLE = ("tree", "conv")
TRAIN_LR = 0.01  # plain SGD, as the lecture (its 0.1 would do as well; speed does not depend on it)


def include_compiled_forms():
    """Name the compiled forms among the forms and the conv forms (compare.py --compile): its tables, plots and
    ratios then cover them."""
    global FORMS, CONV_FORMS
    FORMS, CONV_FORMS = FORMS + COMPILED_FORMS, CONV_FORMS + COMPILED_FORMS


def compiled_variants(form, compile):
    """[False] or, with compile, [False, True] for a conv form: its workloads eager, and through torch.compile."""
    return [False, True] if compile and form + COMPILED in COMPILED_FORMS else [False]


@dataclass
class Workload:
    form: str
    mode: str
    batch_size: int  # predictions per batch (per optimizer step in train); for loop 1
    n_predictions: int  # predictions per call of run
    n_batches: int
    macs: int  # multiply-adds of one call's matmuls (training: forward and backward)
    run: object  # the timed callable
    compile_s: float = None  # compiled forms: seconds of the first call, which compiles
    compilations: int = None  # compiled forms: graphs compiled by that first call


# ---- multiply-adds per form, from shapes --------------------------------------------------------------

def tree_macs_per_window(config):
    """Every node of the window's tree: block / 2**(level + 1) nodes at each level, then the head."""
    macs, fan_in = 0, 2 * config.n_embd
    for level in range(config.n_levels):
        macs += config.block_size // 2 ** (level + 1) * fan_in * config.n_hidden
        fan_in = 2 * config.n_hidden
    return macs + config.n_hidden * config.vocab_size


def packed_macs(config, targets, form, mode="eval"):
    if form.endswith(COMPILED):
        return compiled_macs(config, targets, form.removesuffix(COMPILED), mode)
    return eager_macs(config, targets, form, mode)


def compiled_macs(config, targets, form, mode):
    """As eager_macs, with each level above level 1 as packing.gathered_taps_conv runs it compiled: the later
    tap at every position, the earlier tap at the positions some position reads (offset >= dilation), or the
    later tap alone where the dilation reaches past every item."""
    row = ItemRow((targets != IGNORE_INDEX).sum(1))
    n, h, v = len(row.offset), config.n_hidden, config.vocab_size
    macs = n * h * v + (2 * v * config.n_embd * h if form == "conv" else 0) + pair_table_level_macs(config, form)
    for level in range(2, config.n_levels):
        d = 2**level
        macs += (n + (n - row.positions_below_offset(d) if row.longest > d else 0)) * h * h
    all_dot_macs = max(0, config.n_levels - 2) * h * h
    if mode == "train":
        return 3 * macs + 2 * all_dot_macs + 4 * v * v * h
    return macs + all_dot_macs


def eager_macs(config, targets, form, mode="eval"):
    """ConvWaveNet or FoldedConvWaveNet on a padded batch: its valid positions packed in one row. Level 0 is a table of
    every token pair (the conv computes it each call from each tap's v rows, the folded form once when it is built),
    and so is level 1: each of its taps on that table (the folded form once, when it is built), then two row gathers
    a position. At each level above: the earlier tap on the
    all-dot node (one vector), then the Conv1d over the row and the later tap again at the items' first positions;
    where few items are longer than the dilation, the Conv1d over those items' sub-row and the later tap at every
    offset below the dilation (a Conv1d's row with its zero filler: conv_outputs); where most positions lie at
    offsets below the dilation, the later tap at every position and the earlier one at the others; where the
    dilation reaches past every item, the later tap alone. Then the head. Training triples the matmuls (the input's
    and the weight's gradient) but only doubles the all-dot node's matrix-vector product (its weight gradient is an
    outer product, no matmul). In training, level 0's batch statistics are counted over the table: two (v v) h
    matrix-vector products forward (the mean and the variance) and two outer products of that size backward. In eval
    over items sorted by length in long runs (the whole validation split, bucketed), each level does both taps at
    offsets >= its dilation and the later tap below, nothing replaced."""
    row = ItemRow((targets != IGNORE_INDEX).sum(1))
    n, h, v = len(row.offset), config.n_hidden, config.vocab_size
    macs = n * h * v + (2 * v * config.n_embd * h if form == "conv" else 0) + pair_table_level_macs(config, form)
    runs = mode == "eval" and row.in_long_length_runs  # inference over length-sorted items: length_runs_conv
    for level in range(2, config.n_levels):
        d = 2**level
        if row.longest <= d:  # the later tap alone
            macs += n * h * h
        elif runs:  # both taps at offsets >= d, the later tap below
            macs += int((2 * (row.lengths - d).clamp(min=0) + row.lengths.clamp(max=d)).sum()) * h * h
        elif row.few_longer_than(d):  # the later tap at offsets < d, the Conv1d over the longer items' sub-row
            macs += (row.positions_below_offset(d) + 2 * conv_outputs(row.positions_longer_than(d), d)) * h * h
        elif row.mostly_near_start(d):  # the later tap at every position, the earlier at offsets >= d
            macs += (2 * n - row.positions_below_offset(d)) * h * h
        else:  # the Conv1d over the row, the later tap again at the item starts
            macs += (2 * conv_outputs(d + n, d) + len(row.crossing(d))) * h * h
    all_dot_macs = max(0, config.n_levels - 2) * h * h
    if mode == "train":
        return 3 * macs + 2 * all_dot_macs + 4 * v * v * h
    return macs + all_dot_macs


def pair_table_level_macs(config, form):
    """Level 1 of the conv, each of its taps on level 0's table of the v * v token pairs (packing.pair_rows_conv);
    the folded form made those two products when it was built."""
    if form != "conv" or config.n_levels < 2:
        return 0
    return 2 * config.vocab_size**2 * config.n_hidden**2


def conv_outputs(m, d):
    """Outputs of a Conv1d at dilation d over a row of m positions, as packing.conv_over_rows runs it: after zero
    filler up to packing.quantized_length(m)."""
    return quantized_length(m) - d


def nominal_macs_per_prediction(config, form):
    """The model's own cost per prediction, without padding: the tree's 2**L - 1 nodes against L nodes."""
    if form in ("loop", "tree"):
        return tree_macs_per_window(config)
    h = config.n_hidden
    if form == "conv_folded":  # levels 0 and 1 are tables
        return max(0, config.n_levels - 2) * 2 * h * h + h * config.vocab_size
    return 2 * config.n_embd * h + (config.n_levels - 1) * 2 * h * h + h * config.vocab_size


# ---- batches ------------------------------------------------------------------------------------------

def item_batches(items, batch_size, generator):
    """Index lists of items of similar length, about batch_size predictions each."""
    per_item = sum(len(it) + 1 for it in items) / len(items)
    return bucketed_batches(items, max(1, round(batch_size / per_item)), generator)


def windows_of(words, vocab, block_size, device):
    x, y = build_windows(words, vocab, block_size)
    return x.to(device), y.to(device)  # n t, n


def padded_batches(items, batches, device):
    return [tuple(t.to(device) for t in pad_items([items[i] for i in b])) for b in batches]  # (b t, b t)


def item_chunks(items, batch_size, device, generator):
    """Length-bucketed padded batches of whole items, about batch_size predictions each, and their item indices."""
    batches = item_batches(items, batch_size, generator)
    return padded_batches(items, batches, device), batches


def chunk_macs(form, mode, config, chunks):
    return sum(packed_macs(config, y.cpu(), form, mode) for _, y in chunks)


# ---- the timed callables -----------------------------------------------------------------------------

def build_models(tree):
    """Each form's model, all from one tree (same weights); train copies are separate so timing never
    changes the weights that the eval forms are checked and timed with."""
    conv = ConvWaveNet.from_tree(tree).eval()
    return {"loop": tree, "tree": tree, "conv": conv, "conv_folded": FoldedConvWaveNet(conv)}


def train_model(tree, form):
    """A fresh training copy of the tree's weights in the given form."""
    if form == "tree":
        return copy.deepcopy(tree).train()
    return ConvWaveNet.from_tree(tree).train()


def layouts_of(chunks, compiled=False):
    """Each padded batch's packed-row layout, made on the CPU and moved to its device, as the batches make it."""
    return [ItemRow.of(x, y, compiled=compiled).to(x.device) for x, y in chunks]


def compiled_form(form, run, outputs, eager_outputs, atol=1e-4):
    """A compiled form's first call (it compiles, untimed): its seconds and the graphs it compiled; every
    batch's output must equal the eager form's on the same weights."""
    before, start = compilations(), time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    for i, (got, expected) in enumerate(zip(outputs(), eager_outputs(), strict=True)):
        if not torch.allclose(got, expected, atol=atol, rtol=atol):
            raise AssertionError(f"{form}: batch {i} differs from the eager form by "
                                 f"{(got - expected).abs().max().item():.2e}")
    print(f"{form}: the first call compiled {compilations() - before} graph(s) in {seconds:.1f} s; every batch "
          f"agrees with the eager form", file=sys.stderr, flush=True)
    return seconds, compilations() - before


def folded_loss(model, x, y, layout=None):
    logits = model(x, y, layout=layout)  # b t v
    return logits, F.cross_entropy(rearrange(logits, "b t v -> (b t) v"), rearrange(y, "b t -> (b t)"),
                                   ignore_index=IGNORE_INDEX)


def eval_workload(form, model, config, data, batch_size, compiled=False):
    """data: dict with 'words', 'items', 'vocab', 'device', 'generator', 'loop_windows' (prepare_data).
    compiled: a conv form through torch.compile (its name + COMPILED), compiled and checked by the first call."""
    device, words, items, vocab = data["device"], data["words"], data["items"], data["vocab"]
    if form in ("loop", "tree"):
        x, y = windows_of(words, vocab, config.block_size, device)
        if form == "loop":
            x, y = x[: data["loop_windows"]], y[: data["loop_windows"]]
            batch_size = 1
        chunks = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        macs = len(x) * tree_macs_per_window(config)
    else:
        chunks, _ = item_chunks(items, batch_size, device, data["generator"])
        macs = chunk_macs(form + (COMPILED if compiled else ""), "eval", config, chunks)
    layouts = layouts_of(chunks, compiled) if form in CONV_FORMS else [None] * len(chunks)
    eager = model
    if compiled:
        model = compile_model(model)

    def step(model, inputs, targets, layout):
        if form == "conv_folded":
            return folded_loss(model, inputs, targets, layout)
        return model(inputs, targets) if layout is None else model(inputs, targets, layout=layout)

    n_predictions = sum(int((y != IGNORE_INDEX).sum()) for _, y in chunks)

    def run():
        with torch.no_grad():
            for (inputs, targets), layout in zip(chunks, layouts):
                step(model, inputs, targets, layout)

    workload = Workload(form, "eval", batch_size, n_predictions, len(chunks), macs, run)
    if compiled:
        def logits(model):
            with torch.no_grad():
                return [step(model, inputs, targets, layout)[0] for (inputs, targets), layout in zip(chunks, layouts)]

        workload.form = form + COMPILED
        workload.compile_s, workload.compilations = compiled_form(
            workload.form, run, lambda: logits(model), lambda: logits(eager))
    return workload


def train_workload(form, model, config, data, batch_size, compiled=False):
    """Forward, backward and an SGD step per batch, over data['train_words'] (a fixed slice of the split).
    compiled: the conv's forward through torch.compile, compiled and checked by the first call."""
    device, words, items, vocab = data["device"], data["train_words"], data["train_items"], data["vocab"]
    if form == "tree":
        x, y = windows_of(words, vocab, config.block_size, device)
        order = torch.randperm(len(x), generator=data["generator"]).to(device)  # the lecture samples windows
        x, y = x[order], y[order]
        # full batches only: a batch of one window has no batch-norm variance
        n = max(batch_size, len(x) - len(x) % batch_size)
        chunks = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]
        macs = 3 * sum(len(xb) for xb, _ in chunks) * tree_macs_per_window(config)  # forward and backward
        options = [{}] * len(chunks)
    elif form == "conv":
        chunks, _ = item_chunks(items, batch_size, device, data["generator"])
        macs = chunk_macs(form + (COMPILED if compiled else ""), "train", config, chunks)
        options = [{"layout": layout} for layout in layouts_of(chunks, compiled)]
    else:
        raise ValueError(f"form {form!r} does not train")
    if compiled and form != "conv":
        raise ValueError(f"form {form!r} does not train compiled")
    optimizer = torch.optim.SGD(model.parameters(), lr=TRAIN_LR)
    n_predictions = sum(int((y != IGNORE_INDEX).sum()) for _, y in chunks)
    forward = compile_model(model) if compiled else model

    def run():
        for (inputs, targets), layout in zip(chunks, options):
            _, loss = forward(inputs, targets, **layout)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    workload = Workload(form, "train", batch_size, n_predictions, len(chunks), macs, run)
    if compiled:
        def losses(model):  # training-mode forwards, with autograd as in the timed steps
            return [model(inputs, targets, **layout)[1].detach() for (inputs, targets), layout in zip(chunks, options)]

        workload.form = form + COMPILED
        # the first call compiles and steps; then the compiled and an eager copy of the stepped weights agree
        reference = {}
        workload.compile_s, workload.compilations = compiled_form(
            workload.form, lambda: (run(), reference.setdefault("model", copy.deepcopy(model))),
            lambda: losses(forward), lambda: losses(reference["model"]))
    return workload
