"""Train the WaveNet from one command: the lecture's tree step for step, or the conv on whole names.

    python -m wavenet_conv.train                                        # the default recipe: the conv on whole names
    python -m wavenet_conv.train --target-loss 1.9937                   # stop at the lecture's validation loss
    python -m wavenet_conv.train --model tree --recipe lecture -o runs/lecture   # makemore part 5, exactly
    python -m wavenet_conv.train -o out --resume                        # continue an interrupted run
    python -m wavenet_conv.train -o out --sample-only                   # sample names from the trained model

The work dir gets model.pt (the best-validation checkpoint, or the last one for the lecture recipe, which
reports its final model), last.pt (the latest state: what --resume continues), metrics.jsonl, summary.json,
loss.png and samples.txt.
"""
import argparse
import copy
import json
import math
import os
import platform
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from wavenet_conv.checkpoint import CHECKPOINT_NAME, load, load_checkpoint, model_classes, save_checkpoint
from wavenet_conv.config import ARCHS, ModelConfig
from wavenet_conv.conv import ConvWaveNet
from wavenet_conv.data import (
    DEFAULT_INPUT, Vocab, bucketed_batches, build_windows, encode_items, pad_items, read_words, split_words,
)
from wavenet_conv.device import DEVICE_CHOICES, resolve_device
from wavenet_conv.errors import CheckpointError, UserError, exit_on_user_error
from wavenet_conv.evaluate import SPLIT_NAMES, SplitEvaluator, check_vocab
from wavenet_conv.optimizers import AdamW, LectureSGD
from wavenet_conv.packed import PackedConvWaveNet, packed_batch
from wavenet_conv.recipes import DEFAULT_RECIPE, RECIPES, Recipe, get_recipe

RESUME_NAME = "last.pt"
PACKED = True  # train the conv through its packed form (the same function, faster); off: padded batches
SAVE_EVERY_S = 60  # during a run, checkpoints are written at most this often (and always at its end or interruption)
# flags that may change when a run is resumed; the others describe the run itself and must match its checkpoint
RESUMABLE = ("max_steps", "epochs", "eval_interval", "log_interval")


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


def command_start_time():
    """time.monotonic() at the moment this process started (Linux), so timings include start-up and imports."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.monotonic() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic()


COMMAND_STARTED = None  # set when run as a command; in-process callers time from main()'s entry


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Train a WaveNet (makemore part 5) as the lecture's tree or as the conv.")
    parser.add_argument("--input-file", "-i", default=DEFAULT_INPUT, help="input file with one item (name) per line")
    parser.add_argument("--work-dir", "-o", default="out", help="output working directory")
    parser.add_argument("--model", choices=("conv", "tree"), default=None,
                        help="conv: whole names, every position at once; tree: the lecture's windows (default: the recipe's)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=DEFAULT_RECIPE,
                        help=f"training recipe: {'; '.join(f'{r.name}: {r.description}' for r in RECIPES.values())}")
    parser.add_argument("--max-steps", type=int, default=None, help="number of optimization steps (default: the recipe's)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the training names, when --max-steps is not given")
    parser.add_argument("--batch-size", "-b", type=int, default=None, help="names (conv) or windows (tree) per step")
    parser.add_argument("--batching", choices=("random", "bucketed"), default=None,
                        help="conv batches: random names, or names of similar length (default: the recipe's)")
    parser.add_argument("--learning-rate", "-l", type=float, default=None, help="peak learning rate")
    parser.add_argument("--weight-decay", "-w", type=float, default=None, help="AdamW weight decay on the matrices")
    parser.add_argument("--n-embd", type=int, default=None, help="number of embedding channels")
    parser.add_argument("--n-hidden", type=int, default=None, help="number of hidden channels of every level")
    parser.add_argument("--block-size", type=int, default=None, help="context length, a power of two")
    parser.add_argument("--arch", choices=ARCHS, default=None,
                        help="lecture: makemore part 5's levels; gated: WaveNet's gated residual blocks with skips, "
                             "n_embd residual channels and n_hidden gate channels (default: the recipe's)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="gated arch: dropout on each level's gated activations (default: the recipe's)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks CUDA when it really works")
    parser.add_argument("--threads", default="auto",
                        help="CPU threads: a number, or auto (all cores, fewer when other processes keep them busy)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the initialisation and of the batch order")
    parser.add_argument("--eval-interval", type=int, default=None, help="steps between full validation evaluations")
    parser.add_argument("--log-interval", type=int, default=None, help="steps between progress lines")
    parser.add_argument("--target-loss", type=float, default=None,
                        help="stop as soon as the full validation loss is at or below this")
    parser.add_argument("--keep-going", action="store_true",
                        help="with --target-loss: record when it is reached, but train on to --max-steps")
    parser.add_argument("--resume", action="store_true", help=f"continue the run in --work-dir from its {RESUME_NAME}")
    parser.add_argument("--sample-only", action="store_true", help="only sample names from the model in --work-dir")
    parser.add_argument("--num-samples", type=int, default=20, help="number of names to sample at the end")
    args = parser.parse_args(argv)
    for flag in ("max_steps", "batch_size", "n_embd", "n_hidden", "block_size", "eval_interval", "log_interval"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
    for flag in ("epochs", "learning_rate"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.num_samples < 0:
        parser.error(f"--num-samples must be non-negative, got {args.num_samples}")
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) > 0):
        parser.error(f"--threads must be a positive number or auto, got {args.threads!r}")
    return args


def choose_threads(threads):
    """auto: one thread per core that no other process is using right now, at least one.

    Threads that share a core with another busy process wait for each other at every parallel region: on a
    2-core machine with one other busy process, two threads train several times slower than one.
    """
    if threads != "auto":
        return int(threads)
    return max(1, (os.cpu_count() or 1) - other_running_processes())


def other_running_processes(samples=9, interval=0.01):
    """Runnable tasks besides this one (/proc/loadavg), the median of a few samples; the load average elsewhere."""
    counts = []
    try:
        for _ in range(samples):
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)  # "running/total"; we are one of them
            time.sleep(interval)
    except (OSError, ValueError, IndexError):
        try:
            return round(os.getloadavg()[0])
        except OSError:
            return 0
    return sorted(counts)[len(counts) // 2]


def recipe_overrides(args):
    return {"model": args.model, "batching": args.batching, "max_steps": args.max_steps, "epochs": args.epochs,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "weight_decay": args.weight_decay, "n_embd": args.n_embd,
            "n_hidden": args.n_hidden, "block_size": args.block_size, "eval_interval": args.eval_interval,
            "log_interval": args.log_interval, "arch": args.arch, "dropout": args.dropout}


# ---------------------------------------------------------------------------------------------- batches


class WindowBatches:
    """The lecture's sampling: `ix = torch.randint(0, n, (batch_size,))` from the global torch RNG, every step."""

    def __init__(self, words, vocab, block_size, batch_size, device):
        self.X, self.Y = build_windows(words, vocab, block_size)  # n t, n
        self.batch_size = batch_size
        self.device = device
        self.n_predictions = len(self.Y)

    def steps_per_epoch(self):
        return max(1, self.n_predictions // self.batch_size)

    def next(self):
        ix = torch.randint(0, self.X.shape[0], (self.batch_size,))
        return self.X[ix].to(self.device), self.Y[ix].to(self.device)

    def state(self):
        return {}  # the global torch RNG state is checkpointed with the others

    def load_state(self, state):
        pass


class NameBatches:
    """Epochs of batches of whole names; a torch.Generator draws each epoch's batches.

    random (the default): every batch a uniform draw of names. bucketed: names of similar length together
    (data.bucketed_batches), which wastes no padding but, with batch norm, leaks: the statistics of a batch
    of equally long names tell the model where the names end, it learns to rely on that, and the eval-mode
    loss suffers. Each batch is packed without padding (PackedItems: every node once, the all-dot node shared),
    the same function as the padded ConvWaveNet, so random batches cost no padding either.
    """

    def __init__(self, items, batch_size, block_size, device, seed, bucketed=False, packed=True):
        if len(items) < batch_size:
            raise UserError(f"--batch-size {batch_size} is larger than the {len(items)} training items")
        self.items = items
        self.batch_size = batch_size
        self.block_size = block_size
        self.device = device
        self.bucketed = bucketed
        self.packed = packed
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
        if self.epoch is None or self.position == len(self.epoch):
            self.epoch_start = self.generator.get_state()
            self.epoch = self.draw_epoch()
            self.position = 0
        batch = [self.items[i] for i in self.epoch[self.position]]
        self.position += 1
        return make_name_batch(batch, self.block_size, self.device, self.packed)

    def state(self):
        """Mid-epoch position: the generator state before this epoch's draw, and the batches done."""
        return {"epoch_start": self.epoch_start, "position": self.position, "in_epoch": self.epoch is not None}

    def load_state(self, state):
        self.generator.set_state(state["epoch_start"])
        self.epoch, self.position = None, 0
        if state["in_epoch"]:
            self.epoch = self.draw_epoch()
            self.position = state["position"]


def make_name_batch(items, block_size, device, packed=True):
    """Packed items and their targets (each item's characters, then '.'), or right-padded x, y without packing."""
    if not packed:
        x, y = pad_items(items)
        return x.to(device), y.to(device)
    packed, targets = packed_batch(items, block_size)
    return packed.to(device), targets.to(device)


def training_forward(model):
    """The module that computes a batch's loss: the packed form of a conv (same parameters) or the model itself."""
    return PackedConvWaveNet(model) if PACKED and isinstance(model, ConvWaveNet) else model


# -------------------------------------------------------------------------------------------- optimizer


def make_optimizer(recipe, model):
    if recipe.optimizer == "sgd":
        return LectureSGD(model.parameters(), recipe.learning_rate)
    if recipe.optimizer == "adamw":
        # decay the matrices only: embeddings, biases and batch-norm gains are not shrunk
        matrices = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
        others = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
        groups = [{"params": matrices, "weight_decay": recipe.weight_decay}, {"params": others, "weight_decay": 0.0}]
        return AdamW(groups, lr=recipe.learning_rate, betas=tuple(recipe.betas))
    raise UserError(f"unknown optimizer {recipe.optimizer!r}")


def learning_rate_at(step, recipe, max_steps):
    """step: the 0-based index of the step about to be taken."""
    if recipe.schedule == "step":
        # the lecture: `lr = 0.1 if i < 150000 else 0.01` over 200,000 steps
        return recipe.learning_rate if step < int(0.75 * max_steps) else recipe.learning_rate / 10
    if recipe.schedule == "cosine":
        warmup = int(recipe.warmup_fraction * max_steps)
        if step < warmup:
            return recipe.learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(1, max_steps - warmup)
        floor = recipe.final_lr_fraction * recipe.learning_rate
        return floor + (recipe.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise UserError(f"unknown learning-rate schedule {recipe.schedule!r}")


# ----------------------------------------------------------------------------------------------- model


def create_model(recipe, vocab, seed):
    """torch.manual_seed(seed), then the model; the lecture init builds the tree first (its layer order)."""
    config = model_config(recipe, vocab)
    tree_class, conv_class = model_classes(recipe.arch)
    torch.manual_seed(seed)
    if recipe.model == "tree":
        return tree_class(config)
    if recipe.init == "lecture":
        return conv_class.from_tree(tree_class(config))
    return conv_class(config)


def model_config(recipe, vocab):
    return ModelConfig(len(vocab), recipe.block_size, recipe.n_embd, recipe.n_hidden, recipe.arch, recipe.dropout)


def set_bn_momentum(model, momentum):
    for module in model.modules():
        if hasattr(module, "running_mean") and hasattr(module, "momentum"):
            module.momentum = momentum


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def hardware_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads"


# --------------------------------------------------------------------------------------------- training


class StopRequests:
    """Ctrl-C and SIGTERM during training ask for a stop at the next step boundary; a second Ctrl-C stops at once."""

    def __init__(self):
        self.signal = None
        self.previous = {}

    def handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self):
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.handle)
        except ValueError:  # not the main thread: signals stay with whoever owns them
            pass
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class Trainer:
    """One training run: model, optimizer, batches, schedule, evaluation, checkpoints and the metrics log."""

    def __init__(self, recipe, vocab, splits, device, seed, work_dir, started, target_loss=None, keep_going=False):
        self.recipe = recipe
        self.vocab = vocab
        self.splits = splits
        self.device = device
        self.seed = seed
        self.work_dir = Path(work_dir)
        self.started = started
        self.target_loss = target_loss
        self.keep_going = keep_going
        self.model = create_model(recipe, vocab, seed).to(device)
        set_bn_momentum(self.model, recipe.bn_momentum)
        self.forward = training_forward(self.model)
        self.optimizer = make_optimizer(recipe, self.model)
        if recipe.model == "tree":
            self.batches = WindowBatches(splits["train"], vocab, recipe.block_size, recipe.batch_size, device)
        else:
            # the gated arch has no packed form: it trains on padded batches through its own forward
            self.batches = NameBatches(encode_items(splits["train"], vocab), recipe.batch_size, recipe.block_size,
                                       device, seed, bucketed=recipe.batching == "bucketed",
                                       packed=PACKED and recipe.arch == "lecture")
        if recipe.max_steps is not None:
            self.max_steps = recipe.max_steps
        else:
            self.max_steps = max(1, math.ceil((recipe.epochs or 1) * self.batches.steps_per_epoch()))
        self.val = SplitEvaluator(splits["val"], vocab)
        self.step = 0  # steps taken
        self.train_losses = []  # the loss of every step, for loss.png
        self.val_points = []  # (step, full validation loss)
        self.best_val, self.best_step = math.inf, None
        self.best = None  # select "best": an unsaved copy of the best model and its checkpoint extras
        self.seconds_before = 0.0  # seconds spent before a --resume
        self.seconds_to_target = None
        self.last_saved = time.monotonic()
        self.metrics = None

    # -- state

    def elapsed(self):
        return self.seconds_before + time.monotonic() - self.started

    def rng_state(self):
        state = {"torch": torch.get_rng_state(), "python": random.getstate(), "batches": self.batches.state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def checkpoint_extra(self):
        """Everything but the model that a resumed run needs to continue exactly."""
        return {
            "recipe": self.recipe.to_dict(), "seed": self.seed, "step": self.step, "max_steps": self.max_steps,
            "optimizer": self.optimizer.state_dict(), "rng": self.rng_state(),
            "train_losses": torch.tensor(self.train_losses, dtype=torch.float64),
            "val_points": [list(p) for p in self.val_points],
            "best_val": self.best_val, "best_step": self.best_step,
            "seconds": self.elapsed(), "seconds_to_target": self.seconds_to_target,
        }

    def save(self):
        """last.pt, the state --resume continues, and model.pt, the kept model (best validation or last)."""
        extra = self.checkpoint_extra()
        save_checkpoint(self.work_dir / RESUME_NAME, self.model, self.vocab, **extra)
        if self.recipe.select == "last":
            save_checkpoint(self.work_dir / CHECKPOINT_NAME, self.model, self.vocab, **extra)
        self.save_best()
        self.last_saved = time.monotonic()

    def save_best(self):
        if self.best is not None:
            save_checkpoint(self.work_dir / CHECKPOINT_NAME, self.best["model"], self.vocab, **self.best["extra"])
            self.best = None

    def restore(self, state):
        """Continue from a last.pt: weights, optimizer, RNG and batch position, logs so far."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.train_losses = state["train_losses"].tolist()
        self.val_points = [tuple(p) for p in state["val_points"]]
        self.best_val, self.best_step = state["best_val"], state["best_step"]
        self.seconds_before = state["seconds"]
        self.seconds_to_target = state["seconds_to_target"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.batches.load_state(rng["batches"])
        keep_metrics_until(self.work_dir / "metrics.jsonl", self.step)

    # -- logging

    def log(self, **record):
        record = {"step": record.pop("step", self.step), **record, "elapsed": round(self.elapsed(), 3)}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    # -- the loop

    def train_step(self, step):
        lr = learning_rate_at(step, self.recipe, self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = self.batches.next()
        _, loss = self.forward(inputs, targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"the training loss is {loss_value} at step {step}; stopped, keeping the last good checkpoint in "
                f"{str(self.work_dir)!r} (try a lower --learning-rate)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step = step + 1
        self.train_losses.append(loss_value)
        return loss_value, lr

    def after_step(self):
        """Called after every step; a hook for callers (the tests interrupt a run here)."""

    def evaluate(self, lr):
        """Full validation loss; True when the run should stop at the target."""
        val = self.val.loss(self.model)
        self.val_points.append((self.step, val))
        improved = val < self.best_val
        if improved:
            self.best_val, self.best_step = val, self.step
            if self.recipe.select == "best":  # a copy now, written at the next save
                self.best = {"model": copy.deepcopy(self.model), "extra": copy.deepcopy(self.checkpoint_extra())}
        reached = self.target_loss is not None and val <= self.target_loss
        if reached and self.seconds_to_target is None:
            self.seconds_to_target = self.elapsed()
        self.log(split="val", loss=val, lr=lr)
        note = " (best)" if improved else ""
        if reached:
            note += f", target {self.target_loss} reached at {self.seconds_to_target:.1f} s"
        tqdm.write(f"step {self.step:7d}/{self.max_steps:7d}: val {val:.4f}{note} | lr {lr:.3g} | {self.elapsed():.1f} s")
        return reached and not self.keep_going

    def run(self):
        """Train to max_steps (or the target); returns the signal number that stopped the run, or None."""
        recipe = self.recipe
        self.work_dir.mkdir(parents=True, exist_ok=True)
        show_bar = sys.stdout.isatty() and sys.stderr.isatty()
        with open(self.work_dir / "metrics.jsonl", "a") as self.metrics, StopRequests() as stop, tqdm(
            total=self.max_steps, initial=self.step, disable=not show_bar, dynamic_ncols=True, leave=False
        ) as bar:
            while self.step < self.max_steps:
                step = self.step
                try:
                    loss, lr = self.train_step(step)
                except TrainingDiverged:
                    self.save_best()  # validated weights; last.pt stays as it was
                    raise
                bar.update(1)
                if step % recipe.log_interval == 0:
                    tqdm.write(f"{step:7d}/{self.max_steps:7d}: {loss:.4f}")  # the lecture's progress line
                    self.log(step=step, split="train", loss=loss, lr=lr)
                done = self.step % recipe.eval_interval == 0 or self.step == self.max_steps
                if done and self.evaluate(lr):
                    break
                if done and time.monotonic() - self.last_saved > SAVE_EVERY_S:
                    self.save()
                self.after_step()
                if stop.signal is not None:
                    self.save()
                    return stop.signal
        self.save()
        return None

    # -- the end

    def kept_model(self):
        """The model whose losses the summary reports (model.pt: best validation, or the last weights), and its step."""
        if self.recipe.select == "best" and self.best_step is not None:
            model, _ = load(self.work_dir / CHECKPOINT_NAME, self.device)
            return model, self.best_step
        return self.model, self.step


def keep_metrics_until(path, step):
    """On --resume, drop log lines written after the checkpoint (a run killed between saves wrote them twice)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [line for line in lines if json.loads(line)["step"] < step
            or (json.loads(line)["split"] != "train" and json.loads(line)["step"] <= step)]
    path.write_text("".join(keep))


def write_samples(model, vocab, train_words, path, num_samples, seed):
    """Sampled names, one per line, each marked as in the training set or new."""
    from wavenet_conv.sample import sample

    generator = torch.Generator().manual_seed(seed)
    max_len = 2 * max(map(len, train_words))
    names = sample(model, vocab, num_samples, generator=generator, max_len=max_len)
    seen = set(train_words)
    lines = [f"{name}\t{'in train' if name in seen else 'new'}" for name in names]
    Path(path).write_text("".join(line + "\n" for line in lines))
    return lines


def load_data(input_file):
    words = read_words(input_file)
    return Vocab.from_words(words), dict(zip(SPLIT_NAMES, split_words(words)))


def sample_only(args, device):
    model, vocab = load(Path(args.work_dir) / CHECKPOINT_NAME, device)
    words = read_words(args.input_file)
    check_vocab(words, vocab)
    for line in write_samples(model, vocab, split_words(words)[0], Path(args.work_dir) / "samples.txt",
                              args.num_samples, args.seed):
        print(line)


def resumed_recipe(state, args):
    """The checkpoint's recipe; only the run-length and logging flags may change on --resume."""
    recipe = Recipe.from_dict(state["recipe"])
    changes = {}
    for name, value in recipe_overrides(args).items():
        if value is None or value == getattr(recipe, name):
            continue
        if name not in RESUMABLE:
            raise CheckpointError(f"--resume continues the checkpoint's run, whose {name} is {getattr(recipe, name)}, "
                                  f"not {value}")
        changes[name] = value
    if "epochs" in changes and "max_steps" not in changes:
        changes["max_steps"] = None  # the new epoch count decides the length
    return replace(recipe, **changes)


@exit_on_user_error
def main(argv=None):
    started = COMMAND_STARTED if COMMAND_STARTED is not None else time.monotonic()
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(choose_threads(args.threads))
    try:
        return train_and_report(args, argv, started)
    finally:
        torch.set_num_threads(threads)  # in-process callers get their setting back


def train_and_report(args, argv, started):
    device = resolve_device(args.device)
    work_dir = Path(args.work_dir)
    if args.sample_only:
        return sample_only(args, device)
    vocab, splits = load_data(args.input_file)
    recipe, seed, resume_state = plan_run(args, vocab, work_dir)
    trainer = Trainer(recipe, vocab, splits, device, seed, work_dir, started, args.target_loss, args.keep_going)
    if resume_state is not None:
        trainer.restore(resume_state)
    else:
        (work_dir / "metrics.jsonl").unlink(missing_ok=True)
    params = count_parameters(trainer.model)
    print(f"recipe {recipe.name}: {recipe.model} model, {recipe.arch} arch, {params:,} parameters, "
          f"{trainer.max_steps:,} steps of {recipe.batch_size} {'windows' if recipe.model == 'tree' else 'names'}, on {hardware_name(device)}")
    stopped_by = trainer.run()
    seconds = trainer.elapsed()
    if stopped_by is not None:
        name = signal.Signals(stopped_by).name
        print(f"{name} at step {trainer.step}: saved {str(work_dir / RESUME_NAME)!r}; continue with --resume")
        raise SystemExit(128 + stopped_by)

    model, kept_step = trainer.kept_model()
    losses = {name: SplitEvaluator(words, vocab).loss(model) for name, words in splits.items()}
    print(f"train {losses['train']:.4f} | val {losses['val']:.4f} | test {losses['test']:.4f} "
          f"(model of step {kept_step}); {trainer.step} steps in {seconds:.1f} s"
          + (f"; target reached at {trainer.seconds_to_target:.1f} s" if trainer.seconds_to_target else ""))
    from wavenet_conv.plot import plot_losses

    plot_losses(trainer.train_losses, trainer.val_points, work_dir / "loss.png",
                title=f"{recipe.name} recipe, {recipe.model}, {recipe.arch}, {params:,} parameters")
    for line in write_samples(model, vocab, splits["train"], work_dir / "samples.txt", args.num_samples, seed):
        print(line)
    summary = {
        "train_loss": losses["train"], "val_loss": losses["val"], "test_loss": losses["test"],
        "params": params, "steps": trainer.step, "kept_step": kept_step,
        "seconds": seconds,  # from the command's start to the end of training: start-up, data, evaluations
        "seconds_to_target": trainer.seconds_to_target, "target_loss": args.target_loss,
        "seconds_total": trainer.elapsed(),  # also the final evaluation, the plot and the samples
        "device": device.type, "hardware": hardware_name(device), "torch": torch.__version__,
        "model": recipe.model, "recipe": recipe.name, "config": model.config.to_dict(), "settings": recipe.to_dict(),
        "seed": seed, "input_file": str(args.input_file),
        "command": " ".join(["python -m wavenet_conv.train", *(argv if argv is not None else sys.argv[1:])]),
    }
    (work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def plan_run(args, vocab, work_dir):
    """(recipe, seed, checkpoint to resume or None): the named recipe with the flags, or the resumed run's own."""
    if not args.resume:
        recipe, seed, state = get_recipe(args.recipe, **recipe_overrides(args)), args.seed, None
    else:
        state = load_checkpoint(work_dir / RESUME_NAME)
        if tuple(state["vocab"]) != vocab.itos:
            raise CheckpointError(f"the vocabulary of {args.input_file!r} differs from the checkpoint's: "
                                  f"is it the same data?")
        if "recipe" not in state:
            raise CheckpointError(f"{str(work_dir / RESUME_NAME)!r} is not a training checkpoint (no recipe)")
        recipe, seed = resumed_recipe(state, args), state["seed"]
    try:
        model_config(recipe, vocab)
    except ValueError as e:
        raise UserError(str(e)) from None
    return recipe, seed, state


if __name__ == "__main__":
    COMMAND_STARTED = command_start_time()
    main()
