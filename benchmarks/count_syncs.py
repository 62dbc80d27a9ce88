"""The aten ops of a training run that would make the host wait for a CUDA device, counted by op and by caller.

    python benchmarks/count_syncs.py                  # 6 steps of the default recipe, then one validation
    python benchmarks/count_syncs.py --recipe quality --steps 20 --block-size 32

An op syncs where a tensor's values decide something on the host: a Python number (`.item()`, `int(t)`,
`if t:`), an output shape (`nonzero`, boolean-mask indexing, `unique`, `repeat_interleave` without
`output_size`, `bincount`) or a comparison's answer (`torch.equal`). On the CPU nothing waits, but the ops are
the same: `SyncingOps` (a TorchDispatchMode) sees them wherever they run, so a CPU run counts what a CUDA run
would wait for. It runs the real Trainer's `train_step` and its validation (`Trainer.val.loss`), on the CPU.
tests/test_sync.py asserts that the conv models' forward and backward, given their batch's layout, issue none.
"""
import argparse
import collections
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes  # noqa: E402

aten = torch.ops.aten

# ops whose result the host needs before it can go on: values become Python numbers, shapes or answers
ALWAYS_SYNCING = {
    # `.item()`, `int(t)`, `if t:` and `allclose` reach the mode as these ops, or as `_local_scalar_dense`
    # where autograd's key decomposes them first
    aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default, aten.equal.default,
    aten.allclose.default,
    aten.nonzero.default, aten.masked_select.default, aten.bincount.default,
    aten._unique.default, aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
    aten.unique_dim_consecutive.default,
}
BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
REPEAT_INTERLEAVE = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}


def syncing_op(func, args, kwargs):
    """The name under which `func(*args, **kwargs)` counts as a syncing op, or None where it runs without one."""
    if func in ALWAYS_SYNCING:
        return func.__name__
    if func in BOOL_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs["indices"]
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f"{func.__name__} (bool index)"
    if func in REPEAT_INTERLEAVE and kwargs.get("output_size", args[-1] if len(args) > 2 else None) is None:
        return f"{func.__name__} (no output_size)"
    return None


def caller(skip=("torch/", "count_syncs.py", "contextlib.py")):
    """file:line function of the innermost Python frame outside torch itself (torch.optim counts as a caller)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if "torch/optim/" in path or not any(part in path for part in skip):
            name = path.split("wavenet_conv/")[-1] if "wavenet_conv/" in path else path.split("site-packages/")[-1]
            return f"{name}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


class SyncingOps(TorchDispatchMode):
    """Records every syncing aten op run inside it: `ops` counts them by name; with `where`, `calls` counts
    (name, caller). With `fail`, the first one raises AssertionError (its traceback shows who called it)."""

    def __init__(self, where=False, fail=False):
        super().__init__()
        self.where, self.fail = where, fail
        self.ops = collections.Counter()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = syncing_op(func, args, kwargs)
        if name is not None:
            if self.fail:
                raise AssertionError(f"a host-device-syncing op ran: {name}")
            self.ops[name] += 1
            if self.where:
                self.calls[name, caller()] += 1
        return func(*args, **kwargs)

    @property
    def total(self):
        return sum(self.ops.values())


def on_the_host(make_batch):
    """make_batch, run outside every dispatch mode: a batch is made of CPU tensors before it moves to the device,
    so its ops wait for nothing."""
    def wrapper(*args, **kwargs):
        with _disable_current_modes():
            return make_batch(*args, **kwargs)
    return wrapper


def print_counts(title, mode):
    """The counts by op, then by caller; torch.optim's own are apart: the foreach AdamW and SGD keep their step
    counters on the CPU (fused AdamW, what CUDA runs, has none), so their `.item()` waits for no device."""
    optimizer = sum(count for (name, where), count in mode.calls.items() if where.startswith("torch/optim"))
    print(f"{title}: {mode.total - optimizer} syncing ops (and {optimizer} in torch.optim on CPU step counters)")
    for name, count in mode.ops.most_common():
        print(f"  {count:6d}  {name}")
    for (name, where), count in sorted(mode.calls.items(), key=lambda item: (-item[1], item[0])):
        print(f"      {count:6d}  {name:34s} {where}")


def main(argv=None):
    from wavenet_conv.data.words import DEFAULT_INPUT, Vocab, read_words, split_words
    from wavenet_conv.inference.evaluation import SPLIT_NAMES
    from wavenet_conv.training.recipes import DEFAULT_RECIPE, get_recipe
    from wavenet_conv.training.trainer import Trainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=DEFAULT_RECIPE)
    parser.add_argument("--steps", type=int, default=6, help="training steps to count")
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--arch", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    words = read_words(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", DEFAULT_INPUT))
    vocab, splits = Vocab.from_words(words), dict(zip(SPLIT_NAMES, split_words(words)))  # as train.py splits them
    recipe = get_recipe(args.recipe, max_steps=args.steps + 1, block_size=args.block_size, arch=args.arch,
                        distill=0.0, members=1)
    with tempfile.TemporaryDirectory() as work_dir:
        trainer = Trainer(recipe, vocab, splits, torch.device("cpu"), 42, work_dir, time.monotonic())
        trainer.batches.next = on_the_host(trainer.batches.next)
        # warm-up, not counted: one-time work (tanh's choice of form, the split's batches)
        trainer.train_step()
        trainer.val.loss(trainer.model)
        with SyncingOps(where=True) as steps:
            for _ in range(args.steps):
                trainer.train_step()
        with SyncingOps(where=True) as evaluation:
            val = trainer.val.loss(trainer.model)
    print(f"recipe {recipe.name}, block {recipe.block_size}, arch {recipe.arch}, batch {recipe.batch_size}; "
          f"val after {args.steps + 1} steps {val:.4f}")
    print_counts(f"{args.steps} training steps (Trainer.train_step, its batches made on the host apart)", steps)
    print_counts("one validation (Trainer.val.loss, its batches made before)", evaluation)


if __name__ == "__main__":
    main()
