"""Train the WaveNet from one command: the lecture's tree step for step, or the conv on whole names.

    python -m wavenet_conv.train                                        # the default recipe: the conv on whole names
    python -m wavenet_conv.train --target-loss 1.9937                   # stop at the lecture's validation loss
    python -m wavenet_conv.train --model tree --recipe lecture -o runs/lecture   # makemore part 5, exactly
    python -m wavenet_conv.train -o out --resume                        # continue an interrupted run
    python -m wavenet_conv.train --recipe quality --members 4 -o runs/ensemble   # 4 seeds, their mixture
    python -m wavenet_conv.train --distill 0.8 --teacher runs/ensemble -o runs/student  # learn from a trained model

The command reads top-down: parse the flags, plan the run (a recipe with the flags, or the saved plan that
--resume continues), run it (training/pipeline.py: a teacher, members, the model), report where it went.
The work dir's files are listed in training/workdir.py.
"""
import gc

if __name__ == "__main__":
    gc.disable()  # until the imports are done: utils/processes.py, end_start_up

import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from wavenet_conv.data.words import DEFAULT_INPUT, read_words, split_words
from wavenet_conv.inference.evaluation import check_vocab
from wavenet_conv.models.checkpoint import load
from wavenet_conv.models.config import ARCHS
from wavenet_conv.training.pipeline import run_training
from wavenet_conv.training.plan import RunData, RunPlan, resumed_recipe
from wavenet_conv.training.recipes import DEFAULT_RECIPE, RECIPES, get_recipe
from wavenet_conv.training.report import write_samples
from wavenet_conv.training.single import RunStopped
from wavenet_conv.training.trainer import StopRequests, model_config
from wavenet_conv.training.workdir import WorkDirLock, prepare_fresh, read_plan, run_files
from wavenet_conv.utils.acceleration import COMPILE_HELP, PRECISION_HELP, PRECISIONS
from wavenet_conv.utils.device import DEVICE_CHOICES, resolve_device
from wavenet_conv.utils.errors import ArgumentParser, CheckpointError, UserError, exit_on_user_error
from wavenet_conv.utils.processes import choose_threads, command_start_time, end_start_up

COMMAND_STARTED = None  # set when run as a command; in-process callers time from main()'s entry


def parse_args(argv):
    parser = ArgumentParser(prog="python -m wavenet_conv.train",
                            description="Train a WaveNet (makemore part 5) as the lecture's tree or as the conv.")
    parser.add_argument("--input-file", "-i", default=DEFAULT_INPUT,
                        help="input file with one item (name) per line (default: data/names.txt, shipped in the repository)")
    parser.add_argument("--work-dir", "-o", default="out", help="work dir: the model, checkpoints, metrics, plot and samples go here (default: out)")
    parser.add_argument("--model", choices=("conv", "tree"), default=None,
                        help="conv: whole names, every position at once; tree: the lecture's windows (default: the recipe's)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=DEFAULT_RECIPE,
                        help=f"training recipe (default: {DEFAULT_RECIPE}): "
                             f"{'; '.join(f'{r.name}: {r.description}' for r in RECIPES.values())}")
    parser.add_argument("--max-steps", type=int, default=None, help="number of optimization steps (default: the recipe's)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the training names, when --max-steps is not given")
    parser.add_argument("--batch-size", "-b", type=int, default=None, help="names (conv) or windows (tree) per step")
    parser.add_argument("--batching", choices=("random", "bucketed"), default=None,
                        help="conv batches: random names, or names of similar length (default: the recipe's)")
    parser.add_argument("--learning-rate", "-l", type=float, default=None, help="peak learning rate")
    parser.add_argument("--weight-decay", "-w", type=float, default=None, help="AdamW weight decay on the matrices")
    parser.add_argument("--schedule", choices=("step", "cosine", "linear"), default=None,
                        help="learning rate over the run: step (the lecture's: a tenth for the last quarter), or a "
                             "warm-up then a cosine or linear decay (default: the recipe's)")
    parser.add_argument("--n-embd", type=int, default=None, help="number of embedding channels")
    parser.add_argument("--n-hidden", type=int, default=None, help="number of hidden channels of every level")
    parser.add_argument("--block-size", type=int, default=None, help="context length, a power of two")
    parser.add_argument("--arch", choices=ARCHS, default=None,
                        help="lecture: makemore part 5's levels; gated: WaveNet's gated residual blocks with skips, "
                             "n_embd residual channels and n_hidden gate channels (default: the recipe's)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="gated arch: dropout on each level's gated activations (default: the recipe's)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto (default) picks CUDA when it really works")
    parser.add_argument("--threads", default="auto",
                        help="CPU threads: a number, or auto (default: all cores, fewer when other processes keep them busy)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help=f"the forward's arithmetic in training and validation (default: fp32): {PRECISION_HELP}; "
                             f"the final losses are float32 either way")
    parser.add_argument("--compile", action="store_true",
                        help=f"{COMPILE_HELP} (default: off: on 2 CPU cores the compilation costs more than it saves "
                             f"in a default run)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the initialisation and of the batch order (default: 42)")
    parser.add_argument("--eval-interval", type=int, default=None, help="steps between full validation evaluations")
    parser.add_argument("--log-interval", type=int, default=None, help="steps between progress lines")
    parser.add_argument("--target-loss", type=float, default=None,
                        help="stop as soon as the full validation loss is at or below this")
    parser.add_argument("--keep-going", action="store_true",
                        help="with --target-loss: record when it is reached, but train on to --max-steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --work-dir at every stage from its checkpoints (a teacher's, the "
                             "members', the model's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run already in --work-dir and start a new one (without it, a work dir that "
                             "holds a run is refused: continue it with --resume)")
    parser.add_argument("--sample-only", action="store_true", help="only sample names from the model in --work-dir (as python -m wavenet_conv.sample does) into its samples.txt")
    parser.add_argument("--num-samples", type=int, default=20, help="number of names to sample at the end (default: 20)")
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
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    for flag in ("epochs", "learning_rate"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.distill is not None and not 0 <= args.distill <= 1:
        raise UserError(f"--distill must be in [0, 1], got {args.distill}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.num_samples < 0:
        raise UserError(f"--num-samples must be non-negative, got {args.num_samples}")
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) > 0):
        raise UserError(f"--threads must be a positive number or auto, got {args.threads!r}")
    return args


def recipe_overrides(args):
    """The recipe fields the flags set (None: the recipe's own)."""
    return {"model": args.model, "batching": args.batching, "max_steps": args.max_steps, "epochs": args.epochs,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "weight_decay": args.weight_decay,
            "schedule": args.schedule,
            "n_embd": args.n_embd, "n_hidden": args.n_hidden, "block_size": args.block_size,
            "eval_interval": args.eval_interval, "log_interval": args.log_interval, "arch": args.arch,
            "dropout": args.dropout, "members": args.members, "distill": args.distill, "teacher": args.teacher,
            "teacher_members": args.teacher_members, "teacher_n_hidden": args.teacher_n_hidden}


@exit_on_user_error
def main(argv=None, on_validation=None):
    """The command. on_validation(step, val_loss), for a caller such as a hyper-parameter sweep, is called after
    every full validation evaluation; an exception it raises leaves last.pt written and comes out of main as is."""
    started = COMMAND_STARTED if COMMAND_STARTED is not None else time.monotonic()
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(choose_threads(args.threads))
    try:
        if args.sample_only:
            return sample_only(args)
        data = RunData.read(args.input_file)
        plan = make_plan(args, argv, data)
        with WorkDirLock(plan.work_dir), StopBetweenSteps():
            if not plan.resume:
                prepare_fresh(plan.work_dir, args.overwrite)
            try:
                summary = run_training(plan, data, started, on_validation)
            except RunStopped as stop:
                print(stop)
                raise SystemExit(128 + stop.signum) from None
        report_files(plan)
        return summary
    finally:
        torch.set_num_threads(threads)  # in-process callers get their setting back


class StopBetweenSteps(StopRequests):
    """Ctrl-C or SIGTERM outside a training loop (which saves and stops at a step boundary): stop at once, as
    RunStopped, with nothing lost: every checkpoint written so far stays, and --resume continues from them."""

    def handle(self, signum, frame):
        raise RunStopped(signum, f"{signal.Signals(signum).name}: stopped between training steps; every "
                                 f"checkpoint written so far is kept: continue with --resume")


def make_plan(args, argv, data):
    """The run to do: the named recipe with the flags, or on --resume the saved run's, with its run length and
    logging changed where the flags say."""
    work_dir = Path(args.work_dir)
    overrides = recipe_overrides(args)
    if args.resume:
        if args.overwrite:
            raise UserError("--resume continues the run in --work-dir and --overwrite deletes it: give one of them")
        saved = read_plan(work_dir)
        if tuple(saved["vocab"]) != data.vocab.itos:
            raise CheckpointError(f"the vocabulary of {args.input_file!r} differs from the saved run's: "
                                  f"is it the same data?")
        recipe, seed = resumed_recipe(saved["recipe"], overrides), saved["seed"]
    else:
        recipe, seed = get_recipe(args.recipe, **overrides), args.seed
    try:
        model_config(recipe, data.vocab)
    except ValueError as e:
        raise UserError(str(e)) from None
    if recipe.members > 1 and args.target_loss is not None:
        raise UserError("--target-loss stops one run at a validation loss; with --members each member would stop "
                        "there, not their mixture: train the members to a length instead")
    n_train = len(data.splits["train"])
    if recipe.model == "conv" and recipe.batch_size > n_train:
        print(f"--batch-size {recipe.batch_size} is more than the {n_train} training items: batches of {n_train}")
        recipe = replace(recipe, batch_size=n_train)
    command = " ".join(["python -m wavenet_conv.train", *(map(str, argv) if argv is not None else sys.argv[1:])])
    return RunPlan(recipe=recipe, seed=seed, work_dir=work_dir, input_file=args.input_file, device=args.device,
                   threads=args.threads, workers=args.workers, resume=args.resume, target_loss=args.target_loss,
                   keep_going=args.keep_going, num_samples=args.num_samples, command=command,
                   compile=args.compile, precision=args.precision)


def report_files(plan):
    """Where the run went, and what to run next."""
    work_dir = plan.work_dir
    files = ", ".join(path.name + ("/" if path.is_dir() else "") for path in run_files(work_dir))
    data = "" if plan.input_file == DEFAULT_INPUT else f" -i {plan.input_file}"
    print(f"wrote {work_dir}/: {files}")
    print(f"next: python -m wavenet_conv.sample -o {work_dir}{data}    # more names")
    print(f"      python -m wavenet_conv.evaluate -o {work_dir}{data}  # its losses again")


def sample_only(args):
    """Sample from the trained model in the work dir into its samples.txt, the lines the sample command prints."""
    work_dir = Path(args.work_dir)
    model, vocab = load(work_dir, resolve_device(args.device))
    words = read_words(args.input_file)
    check_vocab(words, vocab)
    for line in write_samples(model, vocab, split_words(words)[0], work_dir / "samples.txt", args.num_samples,
                              args.seed):
        print(line)


if __name__ == "__main__":
    COMMAND_STARTED = command_start_time()
    import torch._dynamo  # noqa: F401  (every torch.optim optimizer imports it when built: here, with the others)
    end_start_up()
    main()
