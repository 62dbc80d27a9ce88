"""Training batches: how names become tensors for each model form.

The tree trains on the lecture's random windows (WindowBatches); the conv on epochs of whole names
(NameBatches), right-padded (make_name_batch), through its own forward: the nn.Conv1d levels.

Every batch is (inputs, targets, keyword arguments of the model's forward). A conv's batch carries its packed
row's layout (`layout`: packing.ItemRow), made on the CPU before the batch moves to the device, so that the
forward and backward never wait for the device to tell a shape or a branch.

Shape legend: n windows, b batch, t time.
"""
import torch
import torch.nn.functional as F

from wavenet_conv.data.words import IGNORE_INDEX, bucketed_batches, build_windows, encode_items, item_lengths, pad_items
from wavenet_conv.models.packing import ItemRow
from wavenet_conv.utils.errors import UserError


def to_device(tensor, device):
    """A CPU tensor on `device`; to a CUDA device from pinned memory, without waiting for the copy."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def make_name_batch(items, device, compiled=False, time=None, chosen=None):
    """Right-padded whole items and their targets, x = [., w1 .. wL], y = [w1 .. wL, .], padded with 0 and -1
    (to `time` positions if given), and their packed row's layout, all on `device` (compiled: the layout a
    compiled model reads). chosen: the indices of the batch's items, None: every item."""
    x, y = pad_items(items, chosen)  # b t, b t
    if time is not None:
        x, y = F.pad(x, (0, time - x.shape[1]), value=0), F.pad(y, (0, time - y.shape[1]), value=IGNORE_INDEX)
    layout = ItemRow.of(x, y, compiled=compiled)
    return to_device(x, device), to_device(y, device), layout.to(device, non_blocking=True)


class WindowBatches:
    """The lecture's sampling: `ix = torch.randint(0, n, (batch_size,))` from the global torch RNG, every step."""

    unit = "windows"

    def __init__(self, words, vocab, block_size, batch_size, device):
        self.X, self.Y = build_windows(words, vocab, block_size)  # n t, n
        self.batch_size = batch_size
        self.device = device

    def steps_per_epoch(self):
        return max(1, len(self.Y) // self.batch_size)

    def next(self):
        ix = torch.randint(0, self.X.shape[0], (self.batch_size,))
        return self.X[ix].to(self.device), self.Y[ix].to(self.device), {}

    def state(self):
        return {}  # the global torch RNG state is checkpointed with the others

    def load_state(self, state):
        pass


class NameBatches:
    """Epochs of batches of whole names; a torch.Generator draws each epoch's batches.

    random (the default): every batch a uniform draw of names. bucketed: names of similar length together
    (data.bucketed_batches), which wastes no padding but, with batch norm, leaks: the statistics of a batch
    of equally long names tell the model where the names end, it learns to rely on that, and the eval-mode
    loss suffers.
    """

    unit = "names"

    def __init__(self, items, batch_size, device, seed, bucketed=False, compiled=False):
        if len(items) < batch_size:
            raise UserError(f"--batch-size {batch_size} is larger than the {len(items)} training items")
        self.items = items
        self.batch_size = batch_size
        self.device = device
        self.bucketed = bucketed
        self.compiled = compiled  # layouts for a compiled model
        # a compiled model gets every batch padded to one length: a convolution's backward over the padded
        # batch (the gated arch's) fixes its length in the graph; the packed row drops the padding anyway
        self.time = 1 + int(item_lengths(items).max()) if compiled else None
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start = self.generator.get_state()
        self.epoch = None  # the current epoch's batches, as index lists
        self.position = 0  # batches of the current epoch already handed out

    def draw_epoch(self):
        if self.bucketed:
            return bucketed_batches(self.items, self.batch_size, self.generator)
        order = torch.randperm(len(self.items), generator=self.generator).tolist()
        # the remainder waits for a later epoch: every batch is full
        return [order[i : i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]

    def steps_per_epoch(self):
        if self.bucketed:
            return len(bucketed_batches(self.items, self.batch_size, shuffle=False))
        return len(self.items) // self.batch_size

    def next(self):
        return self.next_with_indices()[1:]

    def next_with_indices(self):
        """The next batch's item indices (what distill.TeacherTargets looks up), inputs, targets and the model's
        keyword arguments (its layout)."""
        if self.epoch is None or self.position == len(self.epoch):
            self.epoch_start = self.generator.get_state()
            self.epoch = self.draw_epoch()
            self.position = 0
        indices = self.epoch[self.position]
        self.position += 1
        x, y, layout = make_name_batch(self.items, self.device, self.compiled, self.time, indices)
        return indices, x, y, {"layout": layout}

    def state(self):
        """Mid-epoch position: the generator state before this epoch's draw, and the batches done."""
        return {"epoch_start": self.epoch_start, "position": self.position, "in_epoch": self.epoch is not None}

    def load_state(self, state):
        self.generator.set_state(state["epoch_start"])
        self.epoch, self.position = None, 0
        if state["in_epoch"]:
            self.epoch = self.draw_epoch()
            self.position = state["position"]


def training_batches(recipe, words, vocab, device, seed, compiled=False):
    """The recipe's batches of the training words: the lecture's windows for the tree, whole names for the conv
    (compiled: with the layouts a compiled model reads)."""
    if recipe.model == "tree":
        return WindowBatches(words, vocab, recipe.block_size, recipe.batch_size, device)
    return NameBatches(encode_items(words, vocab), recipe.batch_size, device, seed,
                       bucketed=recipe.batching == "bucketed", compiled=compiled)
