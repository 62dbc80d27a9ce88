"""The training loop of one run: steps, the evaluation schedule, checkpoints, signals and progress.

Checkpoints, so that a `kill -9` at any moment leaves one to --resume: last.pt after the first step, at every
new best validation, at least every SAVE_EVERY_S seconds, at the end and on Ctrl-C / SIGTERM. model.pt, the
kept model, is a second name for last.pt at each new best validation (or at every save when the recipe keeps
its last weights). Each file is written atomically (checkpoint.save_checkpoint). A resumed run restores
weights, optimizer, scheduler, RNG and batch position, and takes exactly the steps the uninterrupted run
would have taken.
"""
import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from wavenet_conv.data.words import item_lengths, sample_items
from wavenet_conv.inference.evaluation import SplitEvaluator
from wavenet_conv.models.checkpoint import (CHECKPOINT_NAME, link_checkpoint, load_checkpoint, model_from_checkpoint,
                                            save_checkpoint)
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.registry import model_classes
from wavenet_conv.training.batches import training_batches
from wavenet_conv.training.optimization import make_optimizer, make_scheduler
from wavenet_conv.training.workdir import RESUME_NAME
from wavenet_conv.utils.acceleration import autocast, compilations, compile_model
from wavenet_conv.utils.errors import CheckpointError, UserError

SAVE_EVERY_S = 30  # last.pt is never older than this while training runs
PROGRESS_EVERY_S = 0.5  # how often the bar's loss and names/s are refreshed
VALIDATION_SAMPLE_ITEMS = 20_000  # a bigger validation split is sampled between checkpoints (names.txt: 3,203)
# the steps' losses stay on the device and are read this many at a time (one wait for a CUDA device), and
# before anything is logged, evaluated or saved: a diverged run stops within this many steps, its checkpoints good
LOSS_READ_EVERY = 10


class TrainingDiverged(UserError):
    """The loss stopped being a finite number."""


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


def output_is_terminal():
    """Progress bars only for a person watching: not in logs, pipes or tests."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def validation_items(items, seed):
    """The validation items of the evaluations during training: all, or a fixed sample of a huge split (the
    final losses use every item)."""
    if len(items) <= VALIDATION_SAMPLE_ITEMS:
        return items
    print(f"validating on a fixed sample of {VALIDATION_SAMPLE_ITEMS:,} of the {len(items):,} validation items "
          f"during training; the final losses use every one")
    return sample_items(items, VALIDATION_SAMPLE_ITEMS, seed)


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
    """One training run: model, optimizer, scheduler, batches, evaluation, checkpoints and the metrics log.

    on_validation(step, val_loss), if given, is called after every full validation evaluation; an exception
    it raises (an Optuna prune, say) is passed on unchanged once last.pt is written. compile and precision
    (utils/acceleration.py): the forward through torch.compile, and under bf16 autocast, in the training steps and
    the validations alike.
    """

    def __init__(self, recipe, vocab, splits, device, seed, work_dir, started, target_loss=None, keep_going=False,
                 on_validation=None, teacher=None, compile=False, precision="fp32"):
        self.recipe = recipe
        self.vocab = vocab
        self.device = device
        self.seed = seed
        self.work_dir = Path(work_dir)
        self.started = started  # time.monotonic() when the command started: timings include start-up
        self.target_loss = target_loss
        self.keep_going = keep_going
        self.on_validation = on_validation
        self.teacher = teacher  # distill.TeacherTargets of the training items, or None: the data alone
        self.model = create_model(recipe, vocab, seed).to(device)
        set_bn_momentum(self.model, recipe.bn_momentum)
        self.forward = compile_model(self.model) if compile else self.model  # the same parameters either way
        self.compiled_before = compilations() if compile else None  # graphs compiled in this process before
        self.precision = precision
        self.batches = training_batches(recipe, splits["train"], vocab, device, seed, compiled=compile)
        if teacher is not None and teacher.lengths.tolist() != (item_lengths(self.batches.items) + 1).tolist():
            raise ValueError("the teacher's targets are not over these training items, in this order")
        if recipe.max_steps is not None:
            self.max_steps = recipe.max_steps
        else:
            self.max_steps = max(1, math.ceil((recipe.epochs or 1) * self.batches.steps_per_epoch()))
        self.optimizer = make_optimizer(recipe, self.model)
        self.scheduler = make_scheduler(self.optimizer, recipe, self.max_steps)
        self.val = SplitEvaluator(validation_items(splits["val"], seed), vocab, compile=compile, precision=precision)
        self.step = 0  # steps taken
        self.lr = None  # the learning rate of the last step
        self.train_losses = []  # the loss of every step, for loss.png
        self.unread_losses = []  # the losses of the steps since, on the device (read_losses)
        self.val_points = []  # (step, full validation loss)
        self.best_val, self.best_step = math.inf, None
        self.seconds_before = 0.0  # seconds spent before a --resume
        self.seconds_to_target = None
        self.last_saved = None  # time.monotonic() of the last save of last.pt; None: not saved by this process yet
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
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": self.rng_state(),
            "train_losses": torch.tensor(self.train_losses, dtype=torch.float64),
            "val_points": [list(p) for p in self.val_points],
            "best_val": self.best_val, "best_step": self.best_step,
            "seconds": self.elapsed(), "seconds_to_target": self.seconds_to_target,
        }

    def save(self, best=False):
        """last.pt, the state --resume continues; model.pt names the same file at a new best validation, or at
        every save when the recipe keeps its last weights."""
        self.read_losses()  # a diverged run stops here: no checkpoint holds its weights
        saved = save_checkpoint(self.work_dir / RESUME_NAME, self.model, self.vocab, **self.checkpoint_extra())
        if best or self.recipe.select == "last":
            link_checkpoint(saved, self.work_dir / CHECKPOINT_NAME)
        self.last_saved = time.monotonic()

    def restore(self, state):
        """Continue from a last.pt: weights, optimizer, scheduler, RNG and batch position, logs so far."""
        if "scheduler" not in state:
            raise CheckpointError("the checkpoint has no learning-rate scheduler state (an older version wrote it); "
                                  "start a new run")
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"the checkpoint's optimizer state does not fit this run: {e}") from None
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
        self.last_saved = time.monotonic()  # last.pt is the state just restored

    # -- logging

    def log(self, **record):
        record = {"step": record.pop("step", self.step), **record, "elapsed": round(self.elapsed(), 3)}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def compilations(self):
        """With compile: the graphs this run has compiled (its training forward and its validations'), else None."""
        return None if self.compiled_before is None else compilations() - self.compiled_before

    # -- the loop

    def train_step(self):
        """One optimization step at the scheduler's learning rate; returns its loss, a tensor on the device (read
        by read_losses with the others)."""
        self.lr = self.optimizer.param_groups[0]["lr"]
        with autocast(self.device, self.precision):
            if self.teacher is None:
                inputs, targets, options = self.batches.next()  # options: a conv's layout
                _, data_loss = self.forward(inputs, targets, **options)
                loss = data_loss
            else:
                indices, inputs, targets, options = self.batches.next_with_indices()
                logits, data_loss = self.forward(inputs, targets, **options)
                loss = self.teacher.loss(logits.float(), targets, data_loss, indices)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.unread_losses.append(data_loss.detach())  # the data's cross-entropy, with a teacher or without
        return self.unread_losses[-1]

    def read_losses(self):
        """Read the losses of the steps since the last read (one wait for the device) into train_losses; a loss
        that is not a finite number stops the run, before its weights reach a checkpoint."""
        if not self.unread_losses:
            return
        values = torch.stack(self.unread_losses).tolist()
        first = self.step - len(values)  # the step of values[0]
        self.unread_losses = []
        self.train_losses += values
        for step, value in enumerate(values, first):
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"the training loss is {value} at step {step}; stopped, keeping the last good checkpoint in "
                    f"{str(self.work_dir)!r} (try a lower --learning-rate)")

    def after_step(self):
        """Called after every step; a hook for callers (the tests interrupt a run here)."""

    def validate(self):
        """Full validation loss, logged, saved when it is a new best and passed to on_validation; True: stop here."""
        self.read_losses()
        val = self.val.loss(self.model)
        self.val_points.append((self.step, val))
        improved = val < self.best_val
        if improved:
            self.best_val, self.best_step = val, self.step
        reached = self.target_loss is not None and val <= self.target_loss
        if reached and self.seconds_to_target is None:
            self.seconds_to_target = self.elapsed()
        self.log(split="val", loss=val, lr=self.lr)
        note = " (best)" if improved else ""
        if reached:
            note += f", target {self.target_loss} reached at {self.seconds_to_target:.1f} s"
        tqdm.write(f"step {self.step:7d}/{self.max_steps}: val loss {val:.4f}{note} | lr {self.lr:.3g} | "
                   f"{self.elapsed():.1f} s")
        if improved:
            self.save(best=True)
        if self.on_validation is not None:
            try:
                self.on_validation(self.step, val)
            except BaseException:
                self.save()
                raise
        return reached and not self.keep_going

    def progress_bar(self):
        """Steps, time left, loss and names (or windows) per second; hidden when the output is not a terminal."""
        return tqdm(total=self.max_steps, initial=self.step, unit="step", disable=not output_is_terminal(),
                    dynamic_ncols=True, leave=False)

    def run(self):
        """Train to max_steps (or the target); returns the signal number that stopped the run, or None."""
        recipe = self.recipe
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for torn in self.work_dir.glob(".*.pt.*.tmp"):  # left by a kill in the middle of a save
            torn.unlink()
        with open(self.work_dir / "metrics.jsonl", "a") as self.metrics, StopRequests() as stop, \
                self.progress_bar() as bar:
            rate_since = (time.monotonic(), self.step)
            while self.step < self.max_steps:
                step = self.step
                loss = self.train_step()
                bar.update(1)
                now = time.monotonic()
                if not bar.disable and now - rate_since[0] >= PROGRESS_EVERY_S:
                    rate = (self.step - rate_since[1]) * recipe.batch_size / (now - rate_since[0])
                    bar.set_postfix_str(f"loss {float(loss):.4f}, {rate:,.0f} {self.batches.unit}/s", refresh=False)
                    rate_since = (now, self.step)
                if step % recipe.log_interval == 0 or len(self.unread_losses) >= LOSS_READ_EVERY:
                    self.read_losses()
                if step % recipe.log_interval == 0:
                    loss = self.train_losses[step]
                    tqdm.write(f"step {step:7d}/{self.max_steps}: train loss {loss:.4f}")  # the lecture's progress line
                    self.log(step=step, split="train", loss=loss, lr=self.lr)
                if self.step % recipe.eval_interval == 0 or self.step == self.max_steps:
                    if self.validate():
                        break
                if self.last_saved is None or time.monotonic() - self.last_saved >= SAVE_EVERY_S:
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
            state = load_checkpoint(self.work_dir / CHECKPOINT_NAME)  # its step: the best may predate a --resume
            return model_from_checkpoint(state).to(self.device).eval(), state["step"]
        return self.model, self.step


def keep_metrics_until(path, step):
    """On --resume, drop log lines written after the checkpoint (a run killed between saves wrote them twice)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line, torn by a kill in the middle of its write
            continue
        if record["step"] < step or (record["split"] != "train" and record["step"] <= step):
            kept.append(line + "\n")
    path.write_text("".join(kept))
