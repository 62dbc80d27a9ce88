"""Train the WaveNet from one command: the lecture's tree step for step, or the conv on whole names.

    python -m wavenet_conv.train                                        # the default recipe: the conv on whole names
    python -m wavenet_conv.train --target-loss 1.9937                   # stop at the lecture's validation loss
    python -m wavenet_conv.train --model tree --recipe lecture -o runs/lecture   # makemore part 5, exactly
    python -m wavenet_conv.train -o out --resume                        # continue an interrupted run
    python -m wavenet_conv.train -o out --sample-only                   # sample names from the trained model
    python -m wavenet_conv.train --recipe quality --members 4 -o runs/ensemble   # 4 seeds, their mixture
    python -m wavenet_conv.train --distill 0.8 --teacher runs/ensemble -o runs/student  # learn from a trained model

The work dir gets model.pt (the best-validation checkpoint, or the last one for the lecture recipe, which
reports its final model), last.pt (the latest state: what --resume continues), metrics.jsonl, summary.json,
loss.png and samples.txt.

With --members K > 1 the command trains an ensemble (ensemble.py, members.py): member k is an ordinary run of
this command in WORK_DIR/member-k with seed seed + k, in worker processes, several at once. The work dir then
gets ensemble.json (the recipe and seed: what --resume continues), and once every member is trained, model.pt
(the mixture of the members' kept models), summary.json (its losses, and each member's) and samples.txt.

With --distill W the model learns from a teacher's predicted probabilities as well as from the data (distill.py):
--teacher's model, or by default a mixture trained first by this command in WORK_DIR/teacher.

This file is the command line: flags, the run's plan (a recipe, or the checkpoint to resume) and the summary.
The loop is trainer.py, the batches batches.py, the optimizers and schedules optimization.py.
"""
import argparse
import json
import os
import platform
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from wavenet_conv.data.words import DEFAULT_INPUT, Vocab, encode_items, read_words, split_words
from wavenet_conv.inference.evaluation import SPLIT_NAMES, SplitEvaluator, check_vocab
from wavenet_conv.models.checkpoint import CHECKPOINT_NAME, load, load_checkpoint
from wavenet_conv.models.config import ARCHS
from wavenet_conv.training.distill import TeacherTargets
from wavenet_conv.training.recipes import DEFAULT_RECIPE, RECIPES, Recipe, get_recipe
from wavenet_conv.training.trainer import RESUME_NAME, Trainer, count_parameters, model_config, output_is_terminal
from wavenet_conv.utils.device import DEVICE_CHOICES, resolve_device
from wavenet_conv.utils.errors import CheckpointError, UserError, exit_on_user_error
from wavenet_conv.utils.files import write_atomically

# flags that may change when a run is resumed; the others describe the run itself and must match its checkpoint
RESUMABLE = ("max_steps", "epochs", "eval_interval", "log_interval")
ENSEMBLE_PLAN = "ensemble.json"  # an ensemble's recipe, seed and vocabulary: what its --resume continues
TEACHER_DIR = "teacher"  # where a distilling run trains its teacher, under its work dir


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
    parser.add_argument("--input-file", "-i", default=DEFAULT_INPUT,
                        help="input file with one item (name) per line (default: data/names.txt, shipped in the repository)")
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
    parser.add_argument("--members", type=int, default=None,
                        help="train K models with seeds seed, seed+1, ...; the model is the mixture of their predicted "
                             "probabilities (default: the recipe's, 1)")
    parser.add_argument("--workers", default="auto",
                        help="with --members: how many members train at once, each in its own process of --threads "
                             "threads (auto: one per free core, at most K; auto threads then share the free cores "
                             "among the workers, 1 each when there are more members than free cores)")
    parser.add_argument("--distill", type=float, default=None,
                        help="weight of a teacher's predicted probabilities in the training loss, beside the data's "
                             "next characters: 0 (the data alone) to 1 (default: the recipe's)")
    parser.add_argument("--teacher", default=None,
                        help="with --distill: the trained model to learn from, a work dir or model.pt (default: a "
                             "mixture of --teacher-members models trained first, in WORK_DIR/teacher)")
    parser.add_argument("--teacher-members", type=int, default=None,
                        help="models in the mixture trained as the teacher (default: the recipe's)")
    parser.add_argument("--teacher-n-hidden", type=int, default=None,
                        help="hidden channels of the teacher's models (default: the recipe's, else --n-hidden)")
    args = parser.parse_args(argv)
    # one-line errors (UserError), as the ensemble's own checks give
    if args.members is not None and args.members < 1:
        raise UserError(f"--members must be positive, got {args.members}")
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) > 0):
        raise UserError(f"--workers must be a positive number or auto, got {args.workers!r}")
    for flag in ("max_steps", "batch_size", "n_embd", "n_hidden", "block_size", "eval_interval", "log_interval",
                 "teacher_members", "teacher_n_hidden"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
    for flag in ("epochs", "learning_rate"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.distill is not None and not 0 <= args.distill <= 1:
        parser.error(f"--distill must be in [0, 1], got {args.distill}")
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
            "log_interval": args.log_interval, "arch": args.arch, "dropout": args.dropout, "members": args.members,
            "distill": args.distill, "teacher": args.teacher, "teacher_members": args.teacher_members,
            "teacher_n_hidden": args.teacher_n_hidden}


@exit_on_user_error
def main(argv=None, on_validation=None):
    """The command. on_validation(step, val_loss), for a caller such as a hyper-parameter sweep, is called after
    every full validation evaluation; an exception it raises leaves last.pt written and comes out of main as is."""
    started = COMMAND_STARTED if COMMAND_STARTED is not None else time.monotonic()
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(choose_threads(args.threads))
    try:
        return train_and_report(args, argv, started, on_validation)
    finally:
        torch.set_num_threads(threads)  # in-process callers get their setting back


def train_and_report(args, argv, started, on_validation=None):
    device = resolve_device(args.device)
    work_dir = Path(args.work_dir)
    if args.sample_only:
        return sample_only(args, device)
    vocab, splits = load_data(args.input_file)
    recipe, seed, resume_state = plan_run(args, vocab, work_dir)
    if recipe.members > 1:
        from wavenet_conv.training.members import train_ensemble

        return train_ensemble(args, argv, started, device, recipe, seed, vocab, splits, on_validation)
    teacher, teacher_facts = distillation_teacher(args, recipe, seed, vocab, splits, device) if recipe.distill else (None, None)
    trainer = Trainer(recipe, vocab, splits, device, seed, work_dir, started, args.target_loss, args.keep_going,
                      on_validation, teacher)
    if resume_state is not None:
        trainer.restore(resume_state)
    else:
        (work_dir / "metrics.jsonl").unlink(missing_ok=True)
        (work_dir / ENSEMBLE_PLAN).unlink(missing_ok=True)  # an earlier ensemble's, which --resume would continue
    params = count_parameters(trainer.model)
    print(f"recipe {recipe.name}: {recipe.model} model, {recipe.arch} arch, {params:,} parameters, {trainer.max_steps:,} steps of "
          f"{recipe.batch_size} {trainer.batches.unit}, on {hardware_name(device)}")
    stopped_by = trainer.run()
    seconds = trainer.elapsed()
    if stopped_by is not None:
        name = signal.Signals(stopped_by).name
        print(f"{name} at step {trainer.step}: saved {str(work_dir / RESUME_NAME)!r}; continue with --resume")
        raise SystemExit(128 + stopped_by)

    model, kept_step = trainer.kept_model()
    losses = final_losses(model, splits, vocab)
    print(losses_line(losses, f"model of step {kept_step}") + f"; {trainer.step} steps in {seconds:.1f} s"
          + (f"; target reached at {trainer.seconds_to_target:.1f} s" if trainer.seconds_to_target else ""))
    from wavenet_conv.training.plot import plot_losses

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
        **run_facts(args, argv, device, recipe, model.config, seed),
        **({"teacher": teacher_facts} if teacher_facts else {}),
    }
    (work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def distillation_teacher(args, recipe, seed, vocab, splits, device):
    """(distill.TeacherTargets, facts for the summary): the targets of a distilling run, from --teacher's model or
    from a mixture of recipe.teacher_members models of this recipe (teacher_n_hidden channels, no distillation)
    trained first by this command in WORK_DIR/teacher, resumed there by --resume."""
    if recipe.model != "conv":
        raise UserError("--distill trains the conv on whole names; the tree's random windows have no teacher targets")
    if recipe.teacher is not None:
        teacher, teacher_vocab = load(recipe.teacher, device)  # a work dir or a model.pt
        facts = {"path": str(recipe.teacher)}
    else:
        teacher_dir = Path(args.work_dir) / TEACHER_DIR
        overrides = {"members": recipe.teacher_members, "n_hidden": recipe.teacher_n_hidden or recipe.n_hidden,
                     "distill": 0.0, "work_dir": str(teacher_dir), "num_samples": 0, "target_loss": None,
                     "keep_going": False, "resume": args.resume and any(
                         (teacher_dir / name).is_file() for name in (ENSEMBLE_PLAN, RESUME_NAME))}
        print(f"distilling from a teacher trained first in {str(teacher_dir)!r}:")
        summary = train_and_report(argparse.Namespace(**{**vars(args), **overrides}), None, time.monotonic())
        teacher, teacher_vocab = load(teacher_dir, device)
        facts = {"work_dir": TEACHER_DIR, **{k: summary[k] for k in ("val_loss", "test_loss", "params", "seconds_total")}}
    if teacher_vocab.itos != vocab.itos:
        raise UserError(f"the teacher's vocabulary differs from {args.input_file!r}'s: was it trained on this data?")
    print(f"distilling: weight {recipe.distill} on the teacher's probabilities ({count_parameters(teacher):,} "
          f"parameters), {1 - recipe.distill:g} on the data")
    items = encode_items(splits["train"], vocab)
    return TeacherTargets(teacher, items, len(vocab), recipe.distill), facts


def final_losses(model, splits, vocab):
    """{split: loss} of the model a run reports, over every prediction of each split."""
    return {name: SplitEvaluator(words, vocab).loss(model)
            for name, words in tqdm(splits.items(), desc="final evaluation", disable=not output_is_terminal(),
                                    leave=False)}


def losses_line(losses, note):
    return f"train {losses['train']:.4f} | val {losses['val']:.4f} | test {losses['test']:.4f} ({note})"


def run_facts(args, argv, device, recipe, config, seed):
    """The summary's description of the run: where it ran, the model, the recipe and the command."""
    return {
        "device": device.type, "hardware": hardware_name(device), "torch": torch.__version__,
        "model": recipe.model, "recipe": recipe.name, "config": config.to_dict(), "settings": recipe.to_dict(),
        "seed": seed, "input_file": str(args.input_file),
        "command": " ".join(["python -m wavenet_conv.train", *(argv if argv is not None else sys.argv[1:])]),
    }


def plan_run(args, vocab, work_dir):
    """(recipe, seed, state to resume or None): the named recipe with the flags, or the resumed run's own: its
    checkpoint's, or an ensemble's plan (ensemble.json), whose members resume from their own checkpoints."""
    if not args.resume:
        recipe, seed, state = get_recipe(args.recipe, **recipe_overrides(args)), args.seed, None
    else:
        plan = work_dir / ENSEMBLE_PLAN
        state = read_plan(plan) if plan.is_file() else load_checkpoint(work_dir / RESUME_NAME)
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


def load_data(input_file):
    words = read_words(input_file)
    return Vocab.from_words(words), dict(zip(SPLIT_NAMES, split_words(words)))


def write_plan(path, recipe, seed, vocab):
    """ensemble.json: what a --resume of the ensemble needs to run (or resume) each member."""
    plan = {"recipe": recipe.to_dict(), "seed": seed, "vocab": list(vocab.itos)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(plan, indent=2) + "\n"))


def read_plan(path):
    try:
        plan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the ensemble plan {str(path)!r}: {e}") from None
    if not isinstance(plan, dict) or not {"recipe", "seed", "vocab"} <= plan.keys() \
            or not isinstance(plan["recipe"], dict) or plan["recipe"].get("members", 1) < 2:
        raise CheckpointError(f"{str(path)!r} is not an ensemble plan")
    return plan


def sample_only(args, device):
    model, vocab = load(Path(args.work_dir) / CHECKPOINT_NAME, device)
    words = read_words(args.input_file)
    check_vocab(words, vocab)
    for line in write_samples(model, vocab, split_words(words)[0], Path(args.work_dir) / "samples.txt",
                              args.num_samples, args.seed):
        print(line)


def write_samples(model, vocab, train_words, path, num_samples, seed):
    """Sampled names, one per line, each marked as in the training set or new."""
    from wavenet_conv.inference.sampling import sample

    generator = torch.Generator().manual_seed(seed)
    max_len = 2 * max(map(len, train_words))
    names = sample(model, vocab, num_samples, generator=generator, max_len=max_len)
    seen = set(train_words)
    lines = [f"{name}\t{'in train' if name in seen else 'new'}" for name in names]
    Path(path).write_text("".join(line + "\n" for line in lines))
    return lines


def hardware_name(device, threads=True):
    """The GPU's name, or the CPU's with this process's thread count (threads=False: without it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads" if threads else name


if __name__ == "__main__":
    COMMAND_STARTED = command_start_time()
    main()
