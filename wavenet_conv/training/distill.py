"""Distillation: a model trained on a trained teacher's predicted distributions as well as on the data.

A model of 79K parameters trained on names.txt's 25,626 training names fits them far better than it predicts
new ones (train 1.77, val 1.96), and no regulariser tried closed the gap. A teacher (here a mixture of larger
models, ensemble.py) gives at every position a whole distribution over the next character instead of the one
character that came: a richer target, which the student fits without overfitting so much (Hinton, Vinyals and
Dean, "Distilling the Knowledge in a Neural Network", 2015). The student minimises

    (1 - w) * cross_entropy(logits, next character) + w * cross_entropy(logits, teacher's probabilities)

where the second term is the KL divergence from the teacher plus the teacher's entropy, a constant. The
teacher's probabilities at every training position are computed once, before training, in eval mode
(`TeacherTargets`): a training step costs what it costs without a teacher.

Shape legend: b batch, t time, n positions (items back to back), v vocab.
"""
import numpy as np
import torch
import torch.nn.functional as F

from wavenet_conv.data.words import item_lengths, pad_items
from wavenet_conv.models.packing import ItemRow
from wavenet_conv.training.batches import to_device
from wavenet_conv.utils.errors import UserError

TEACHER_BATCH_ITEMS = 1024  # items per forward of the teacher while its targets are computed


class TeacherTargets:
    """The teacher's next-character distribution at every position of the training items, items back to back in
    their order (n v), and the distillation loss of a batch of those items."""

    def __init__(self, teacher, items, vocab_size, weight):
        from wavenet_conv.inference.evaluation import inference_forward

        if not 0 < weight <= 1:
            raise UserError(f"the distillation weight must be in (0, 1], got {weight}")
        self.weight = weight
        lengths = item_lengths(items)
        self.lengths = torch.from_numpy(lengths + 1)  # every position predicts: the end marker too
        self.starts = ItemRow(self.lengths).starts  # each item's first row of `probabilities`
        weights = next(teacher.parameters())
        self.probabilities = torch.empty(int(self.lengths.sum()), vocab_size, dtype=weights.dtype)  # n v
        was_training = teacher.training
        teacher.eval()
        forward = inference_forward(teacher)
        by_length = np.argsort(lengths, kind="stable").tolist()  # little padding; the folded form's batches
        with torch.inference_mode():
            for first in range(0, len(by_length), TEACHER_BATCH_ITEMS):
                batch = torch.tensor(by_length[first : first + TEACHER_BATCH_ITEMS])
                x, y = pad_items(items, batch.tolist())  # b t, b t
                layout = ItemRow.of(x, y).to(weights.device)
                logits = forward(x.to(weights.device), y.to(weights.device), layout)  # b t v
                self.probabilities[self.positions_of(batch)] = F.softmax(layout.pack(logits), dim=-1).cpu()  # n v
        teacher.train(was_training)

    def positions_of(self, indices, batch=None):
        """The rows of `probabilities` of the given items (b), item after item: the order of a batch's valid
        positions, `logits[targets != -1]` (b t -> n). batch: their packed row, if made already."""
        if batch is None:
            batch = ItemRow(self.lengths[indices])  # the batch's items back to back, as its packed row
        return self.starts[indices].index_select(0, batch.item) + batch.offset  # n

    def loss(self, logits, targets, data_loss, indices):
        """The student's loss on a batch of the items `indices` (b): logits and targets b t v, b t."""
        teacher, row = self.batch_targets(indices, targets.shape[1], logits.device)
        return self.batch_loss(logits, data_loss, teacher, row)

    def batch_targets(self, indices, time, device):
        """The teacher's rows of a batch of the items `indices` (b) padded to `time` (n v), and the batch's packed
        row: gathered on the host, sent to `device` without waiting for it."""
        indices = torch.as_tensor(indices)
        row = ItemRow(self.lengths[indices], time=time)  # the batch's items back to back
        teacher = self.probabilities.index_select(0, self.positions_of(indices, row))  # n v
        return to_device(teacher, device), row.to(device, non_blocking=True)

    def batch_loss(self, logits, data_loss, teacher, row):
        """The loss of `loss` from the batch's logits (b t v), data loss, and `batch_targets` (n v, its row)."""
        teacher_loss = F.cross_entropy(row.pack(logits), teacher.to(logits.dtype))  # soft targets: the teacher's
        return (1 - self.weight) * data_loss + self.weight * teacher_loss
