"""Search the train command's settings with Optuna: any number of workers, one shared study.

    python -m wavenet_conv.sweep -o runs/sweep --trials 20 --recipe quality --epochs 10
    python -m wavenet_conv.sweep -o runs/sweep --trials 20 --storage postgresql://user:pass@host/db   # on each machine
    python -m wavenet_conv.sweep -o runs/sweep --trials 8 --archs lecture -- --block-size 8   # fix a train flag

Each worker runs --trials trials (fewer if --timeout seconds pass first: no trial starts after it) of the
study --study in --storage (default: sqlite:///DIR/study.db, which the workers of one machine share; on a
PostgreSQL URL, with psycopg 3 from pip install -e ".[sweep,postgres]", the workers of many machines share one
study). Workers may start at once on a new database: the one that loses the race to create its tables retries. A
running trial's worker sends a heartbeat every --heartbeat-interval seconds; a trial whose worker was killed is
marked failed once it has been silent for --grace-period seconds, and the other workers go on. A trial
trains in-process with `wavenet_conv.train.main` in its own work dir DIR/trial-NNNN (its output in trial.log)
and scores its best validation loss; the test loss is never used. A trial evaluates every 25,600 training names
(unless `--eval-interval` is given after `--`), and a median pruner stops a trial whose validation loss is worse
than the median of the earlier trials' after the same number of training names, once it has trained on
--prune-from-epoch epochs (default: half of --epochs when given). At the end a
worker prints the study's best trial as a `python -m wavenet_conv.train` command and writes DIR/trials.md (every
trial: state, loss, size, time, settings), DIR/history.png, DIR/importance.png and DIR/loss_vs_params.png.

The search space (the train flag of each setting is --name with dashes):

    arch           lecture | gated                   (--archs; one arch is not searched, and lecture not passed)
    n_embd         8 ... 64, step 8
    n_hidden       32 ... 512, log scale
    block_size     8 | 16 | 32
    learning_rate  1e-3 ... 3e-2, log scale
    weight_decay   0.01 ... 4, log scale
    dropout        0 ... 0.3                         (gated only)
    batch_size     32 | 64 | 128 | 256
    epochs         3 ... 30                          (not searched with --epochs or --max-steps)

A train flag given after `--` is passed to every trial and takes its setting out of the search. Needs Optuna:
pip install -e ".[sweep]".
"""
import gc

if __name__ == "__main__":
    gc.disable()  # until the imports are done: utils/processes.py, end_start_up

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import os
import random
import shlex
import socket
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from wavenet_conv import train
from wavenet_conv.data.words import DEFAULT_INPUT, Vocab, read_words, split_words
from wavenet_conv.inference.evaluation import SPLIT_NAMES
from wavenet_conv.training.plot import plot_loss_vs_params, pyplot
from wavenet_conv.training.recipes import RECIPES, get_recipe
from wavenet_conv.training.trainer import count_parameters, create_model
from wavenet_conv.utils.errors import UserError, exit_on_user_error
from wavenet_conv.utils.files import write_atomically
from wavenet_conv.utils.processes import end_start_up

ARCHS = ("lecture", "gated")
DEFAULT_ARCH = "lecture"  # the train command's, so a sweep of lecture trials never passes --arch
# the space searches AdamW's weight decay and the length of a decaying schedule: the recipes that have them
SWEEP_RECIPES = tuple(name for name, recipe in RECIPES.items() if recipe.optimizer == "adamw")
SEARCHED = ("arch", "n_embd", "n_hidden", "block_size", "learning_rate", "weight_decay", "dropout", "batch_size",
            "epochs", "distill")
# a trial evaluates every this many training names (about one epoch of names.txt's training split, and a multiple
# of every searched batch size), so the pruner compares trials of any batch size after the same amount of training
EVAL_EVERY_NAMES = 25_600
SQLITE_TIMEOUT_S = 60  # a worker waits this long for another's write to the shared SQLite file
# a running trial's worker marks it alive this often; one silent for the grace period (its worker was killed) is
# marked failed when a worker starts a trial or ends, so the study's counts and plots do not wait on it forever
HEARTBEAT_S, HEARTBEAT_GRACE_S = 60, 300
# workers started at once on a new database race to create its tables: the losers retry, this many times in all,
# after a random pause that grows with each try (up to about 6 s in all)
CREATE_TRIES, CREATE_BACKOFF_S = 8, (0.05, 0.3)
POSTGRES_HINT = 'the plain postgresql:// URL needs psycopg 3: pip install -e ".[sweep,postgres]"'
TRIAL_LOG = "trial.log"  # a trial's output, in its work dir
LECTURE_REFERENCE = ("the lecture's val 1.9937 (its split)", 1.9937)
INSTALL_HINT = 'the sweep needs Optuna: pip install -e ".[sweep]"'


class TrialFailed(Exception):
    """A trial's training stopped with a one-line error (diverged, batch too large): the study goes on."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Search the train command's settings with Optuna; workers share a study through --storage.",
        epilog="Train flags after `--` go to every trial, and a setting given there is not searched.")
    parser.add_argument("--work-dir", "-o", default="sweep", help="output directory: trial-NNNN/, study.db, plots")
    parser.add_argument("--input-file", "-i", default=DEFAULT_INPUT, help="input file with one item (name) per line")
    parser.add_argument("--study", default="wavenet_conv", help="study name; workers with the same name share it")
    parser.add_argument("--trials", type=int, default=10, help="trials this worker runs")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds after which this worker starts no new trial (the running one finishes)")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL. Default sqlite:///WORK_DIR/study.db: the workers of one machine "
                             "share it (sqlite:////abs/path.db names another file; no extra needed). "
                             "postgresql://USER:PASSWORD@HOST:PORT/DB shares the study between machines and needs "
                             "psycopg 3: pip install -e \".[sweep,postgres]\" (postgresql+psycopg2://... uses "
                             "psycopg2 instead, installed by hand). Optuna's other database URLs (mysql+pymysql://...) "
                             "need their driver installed by hand, and are not tested here. See docs/sweeps.md.")
    parser.add_argument("--heartbeat-interval", type=int, default=HEARTBEAT_S, metavar="SECONDS",
                        help="a running trial's worker marks it alive this often (default %(default)s)")
    parser.add_argument("--grace-period", type=int, default=HEARTBEAT_GRACE_S, metavar="SECONDS",
                        help="a running trial not marked alive for this long (its worker was killed) is marked "
                             "failed by the next worker that starts a trial or ends (default %(default)s)")
    parser.add_argument("--recipe", choices=SWEEP_RECIPES, default="fast", help="the recipe every trial starts from")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="steps of every trial (then epochs is not searched)")
    parser.add_argument("--epochs", type=float, default=None, help="epochs of every trial (then not searched)")
    parser.add_argument("--archs", default=",".join(ARCHS),
                        help=f"comma list of architectures to search, of {', '.join(ARCHS)}")
    parser.add_argument("--max-params", type=int, default=None,
                        help="prune a trial whose model has more parameters than this before it trains")
    parser.add_argument("--prune-after", type=int, default=5,
                        help="trials that must complete before the median pruner stops any")
    parser.add_argument("--prune-from-epoch", type=float, default=None,
                        help="no trial is pruned before it has trained on this many epochs of the training names "
                             "(default: half of --epochs when given, else from its first evaluation)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (trial N draws from seed + N)")
    parser.add_argument("--threads", default="1", help="CPU threads of each trial (a number or auto)")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_flags = train_flags = argv[split + 1 :]
    # the flags that go to the trials (--max-steps, --epochs, --threads, after `--`) are checked by train's parser
    if args.trials < 1:
        parser.error(f"--trials must be positive, got {args.trials}")
    if args.timeout is not None and not args.timeout > 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if args.max_params is not None and args.max_params < 1:
        parser.error(f"--max-params must be positive, got {args.max_params}")
    if args.prune_after < 0:
        parser.error(f"--prune-after must be non-negative, got {args.prune_after}")
    if args.heartbeat_interval < 1:
        parser.error(f"--heartbeat-interval must be positive, got {args.heartbeat_interval}")
    if args.grace_period <= args.heartbeat_interval:
        parser.error(f"--grace-period must be longer than --heartbeat-interval ({args.heartbeat_interval}), "
                     f"got {args.grace_period}")
    if args.prune_from_epoch is not None and not args.prune_from_epoch >= 0:
        parser.error(f"--prune-from-epoch must be non-negative, got {args.prune_from_epoch}")
    if not args.study:
        parser.error("--study must not be empty")
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in args.archs if a not in ARCHS]
    if unknown or not args.archs or len(set(args.archs)) != len(args.archs):
        parser.error(f"--archs takes distinct names of {', '.join(ARCHS)}, got {','.join(args.archs) or 'none'}")
    for flag in ("-o", "--work-dir", "-i", "--input-file", "--resume", "--sample-only", "--threads", "--arch"):
        if any(f == flag or f.startswith(flag + "=") for f in train_flags):
            parser.error(f"{flag} after `--` belongs to the sweep (--archs for --arch), not to its trials")
    return args


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return optuna


# ---------------------------------------------------------------------------------------- search space


def has_teacher(args):
    """Whether the trials distill from a --teacher given after `--`: only then is the distillation weight searched."""
    return any(f == "--teacher" or f.startswith("--teacher=") for f in args.train_flags)


def fixed_settings(args):
    """The searched settings that the sweep's flags fix, so that no trial searches or passes them."""
    given = train.parse_args([*base_flags(args), "--threads", args.threads])  # train's parser checks its flags
    # train flags default to None, "the recipe's"; --archs alone decides the arch
    fixed = {name for name in SEARCHED if name != "arch" and getattr(given, name, None) is not None}
    if given.max_steps is not None:
        fixed.add("epochs")  # with a step count the epoch count has no effect
    if len(args.archs) == 1:
        fixed.add("arch")
    if not has_teacher(args):
        fixed.add("distill")
    return fixed


def suggest_settings(trial, fixed, archs):
    """The trial's values of the searched settings that are not fixed: {setting: value}."""
    settings = {}

    def searched(name):
        return name not in fixed

    if searched("arch"):
        settings["arch"] = trial.suggest_categorical("arch", archs)
    if searched("n_embd"):
        settings["n_embd"] = trial.suggest_int("n_embd", 8, 64, step=8)
    if searched("n_hidden"):
        settings["n_hidden"] = trial.suggest_int("n_hidden", 32, 512, log=True)
    if searched("block_size"):
        settings["block_size"] = trial.suggest_categorical("block_size", [8, 16, 32])
    if searched("learning_rate"):
        settings["learning_rate"] = trial.suggest_float("learning_rate", 1e-3, 3e-2, log=True)
    if searched("weight_decay"):
        settings["weight_decay"] = trial.suggest_float("weight_decay", 0.01, 4.0, log=True)
    if searched("dropout") and settings.get("arch", archs[0]) == "gated":
        settings["dropout"] = trial.suggest_float("dropout", 0.0, 0.3)
    if searched("batch_size"):
        settings["batch_size"] = trial.suggest_categorical("batch_size", [32, 64, 128, 256])
    if searched("epochs"):
        settings["epochs"] = trial.suggest_int("epochs", 3, 30)
    if searched("distill"):  # with a --teacher: the weight of its probabilities in the loss
        settings["distill"] = trial.suggest_float("distill", 0.5, 1.0)
    return settings


def setting_flags(settings):
    return [token for name, value in settings.items() for token in (f"--{name.replace('_', '-')}", str(value))]


def base_flags(args):
    """The train flags every trial shares: the recipe, the run-length bounds and the flags after `--`. A trial is
    one model (an ensemble recipe's member settings): its validations drive the pruner, and it trains no other
    model first: without a --teacher after `--`, it learns from the data alone (--distill 0)."""
    flags = ["--recipe", args.recipe]
    if get_recipe(args.recipe).members > 1:
        flags += ["--members", "1"]
    if get_recipe(args.recipe).distill and not has_teacher(args):
        flags += ["--distill", "0"]
    if len(args.archs) == 1 and args.archs[0] != DEFAULT_ARCH:
        flags += ["--arch", args.archs[0]]
    if args.max_steps is not None:
        flags += ["--max-steps", str(args.max_steps)]
    if args.epochs is not None:
        flags += ["--epochs", f"{args.epochs:g}"]
    return flags + args.train_flags


def trial_plan(flags):
    """(flags, recipe, seed) of a trial's `python -m wavenet_conv.train FLAGS`, parsed once. Unless the flags set
    --eval-interval, they gain one: every EVAL_EVERY_NAMES training names at the recipe's batch size."""
    given = train.parse_args(flags)
    recipe = get_recipe(given.recipe, **train.recipe_overrides(given))
    if given.eval_interval is None:
        interval = max(1, EVAL_EVERY_NAMES // recipe.batch_size)
        flags, recipe = [*flags, "--eval-interval", str(interval)], replace(recipe, eval_interval=interval)
    return flags, recipe, given.seed


def load_data(input_file):
    """(vocab, {split: items}) of the input file, split as the train command splits it; a DatasetError (one line)
    for a missing or unreadable file, so a bad file stops the sweep before its first trial."""
    words = read_words(input_file)
    return Vocab.from_words(words), dict(zip(SPLIT_NAMES, split_words(words)))


# --------------------------------------------------------------------------------------------- storage


def storage_url(args):
    """--storage as given (or the default SQLite file): what the worker shows, with the password hidden."""
    return args.storage or f"sqlite:///{Path(args.work_dir) / 'study.db'}"


def engine_url(url):
    """The URL SQLAlchemy opens: a plain postgresql:// (or postgres://) URL names psycopg 3, the postgres extra's
    driver, when it is installed (SQLAlchemy 2.0 would take psycopg2 for it, 2.1 psycopg); any other as given."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: RDBStorage says so
        return url
    if parsed.drivername not in ("postgresql", "postgres"):
        return url
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return url.replace("postgres://", "postgresql://", 1)  # SQLAlchemy's default driver, or the hint
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def missing_driver_hint(url):
    from sqlalchemy.engine import make_url

    try:
        drivername = make_url(url).drivername
    except Exception:
        return ""
    if drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return POSTGRES_HINT
    if drivername == "postgresql+psycopg2":
        return ('psycopg2 is not installed: pip install psycopg2-binary, or use a plain postgresql:// URL with '
                'psycopg 3: pip install -e ".[sweep,postgres]"')
    return f"the Python driver of {drivername}:// is not installed"


def retry_creation(create, tries=CREATE_TRIES, backoff_s=CREATE_BACKOFF_S, sleep=time.sleep):
    """create() again after a short random pause when it fails because another worker created the same table,
    row or type at the same moment (SQLAlchemy's IntegrityError or ProgrammingError); other errors, and the last
    try's, are raised."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, tries + 1):
        try:
            return create()
        except (IntegrityError, ProgrammingError):
            if attempt == tries:
                raise
            sleep(random.uniform(*backoff_s) * attempt)


def heartbeat_kwargs(optuna, interval, grace_period):
    """RDBStorage's heartbeat: a trial silent for grace_period seconds is failed, and said so on stdout."""
    parameters = inspect.signature(optuna.storages.RDBStorage).parameters
    # Optuna 4.9 renamed failed_trial_callback (deprecated since)
    callback = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters
                else "failed_trial_callback")

    def say_failed(study, trial):
        worker = trial.user_attrs.get("worker", "its worker")
        print(f"trial {trial.number}: failed: {worker} sent no heartbeat for {grace_period} s (killed?); "
              "the study goes on", flush=True)

    return {"heartbeat_interval": interval, "grace_period": grace_period, callback: say_failed}


def fail_stale_trials(study, optuna):
    """Marks failed the running trials of killed workers (silent for the grace period), as starting a trial does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def sqlite_creation_lock(url):
    """Workers that open a new SQLite file at once race to create its tables; one at a time they do not.

    Locks the directory of the database file (flock works on a directory's descriptor); other URLs: no lock.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        yield
        return
    directory = os.open(Path(parsed.database).resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        yield
    finally:
        os.close(directory)  # releases the lock


def prune_from_names(args, n_train):
    """Training names a trial sees before the pruner may stop it (trials report by names seen). Strongly
    regularized settings learn slowly and win late: in a 200-trial study of 30-epoch trials, the pruner stopped
    every trial with weight decay above 0.3 that it judged within 3 epochs, the region of the best hand-found
    recipe (only three tiny ones, run before it started, finished)."""
    epochs = args.prune_from_epoch
    if epochs is None:
        epochs = args.epochs / 2 if args.epochs is not None else 0
    return round(epochs * n_train)


def open_study(args, optuna, settings, prune_from=0):
    """The study --study in the storage, created if new; a UserError if it was started with other settings.
    Its pruner (each worker's own) stops no trial before `prune_from` training names.

    The storage (its tables) and the study are created once, by whichever worker comes first: a worker that
    races another to create them retries (retry_creation), so any number may start at once on a new database.
    """
    url = storage_url(args)
    sqlite = url.startswith("sqlite")
    # a network database may drop idle connections between trials: test each before use
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if sqlite else {"pool_pre_ping": True}

    def create():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat's
            warnings.simplefilter("ignore", FutureWarning)  # failed_trial_callback's in Optuna 4.9 to 4.x
            storage = optuna.storages.RDBStorage(
                engine_url(url), engine_kwargs=engine_kwargs,
                **heartbeat_kwargs(optuna, args.heartbeat_interval, args.grace_period))
        study = optuna.create_study(
            storage=storage, study_name=args.study, direction="minimize", load_if_exists=True,
            sampler=trial_sampler(args.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=args.prune_after, n_warmup_steps=prune_from))
        if study.user_attrs.get("settings") is None:
            study.set_user_attr("settings", settings)
        # read back: of two new workers that set it at once, the first one's stands
        return study, study.user_attrs["settings"]

    try:
        with sqlite_creation_lock(url):
            study, started_with = retry_creation(create)
    except ImportError:
        raise UserError(f"cannot open --storage {hide_password(url)}: {missing_driver_hint(url)}") from None
    except Exception as e:  # SQLAlchemy's errors: a bad URL, an unreachable server, an unwritable file
        raise UserError(f"cannot open --storage {hide_password(url)}: {first_line(e)}") from None
    if started_with != settings:
        keys = sorted(settings.keys() | started_with.keys())
        differ = ", ".join(f"{k} {started_with.get(k)!r} (here {settings.get(k)!r})"
                           for k in keys if started_with.get(k) != settings.get(k))
        raise UserError(f"study {args.study!r} was started with other settings: {differ}; give the same flags, "
                        f"or another --study")
    return study


def trial_sampler(seed):
    from wavenet_conv.training.trial_sampler import TrialSeededTPE

    return TrialSeededTPE(seed)


def hide_password(url):
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: show it as given
        return repr(url)


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def study_settings(args):
    """What every worker of a study must share: the trials' fixed flags, the search, and the data itself."""
    return {"train_flags": base_flags(args), "archs": args.archs, "max_params": args.max_params,
            "input_sha256": hashlib.sha256(Path(args.input_file).read_bytes()).hexdigest()}


# ---------------------------------------------------------------------------------------------- trials


def report_to(trial, optuna, batch_size):
    """The trainer's on_validation hook: each validation loss goes to the pruner, which may stop the trial.

    Losses are reported by training names seen, not steps: trials of different batch sizes are compared after
    the same amount of training.
    """

    def on_validation(step, val_loss):
        names = step * batch_size
        trial.report(val_loss, names)
        if trial.should_prune():
            message = f"at step {step} ({names:,} names), validation loss {val_loss:.4f}"
            trial.set_user_attr("pruned", message)
            raise optuna.TrialPruned(message)

    return on_validation


def make_objective(args, optuna, vocab, fixed):
    worker = f"worker {socket.gethostname()}:{os.getpid()}"

    def objective(trial):
        trial.set_user_attr("worker", worker)  # named when its heartbeat stops
        flags, recipe, seed = trial_plan(base_flags(args) + setting_flags(suggest_settings(trial, fixed, args.archs)))
        trial.set_user_attr("train_flags", flags)
        if args.max_params is not None:
            params = count_parameters(create_model(recipe, vocab, seed))
            if params > args.max_params:
                message = f"{params:,} parameters, more than --max-params {args.max_params:,}"
                trial.set_user_attr("pruned", message)
                raise optuna.TrialPruned(message)
        work_dir = Path(args.work_dir) / f"trial-{trial.number:04d}"
        work_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("work_dir", str(work_dir))
        argv = [*flags, "-i", str(args.input_file), "-o", str(work_dir), "--threads", args.threads]
        # not train.log: the train command takes a work dir that holds one for an earlier run's
        with open(work_dir / TRIAL_LOG, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                summary = train.main(argv, on_validation=report_to(trial, optuna, recipe.batch_size))
            except SystemExit as e:
                if e.code != 2:  # stopped by a signal (Ctrl-C, SIGTERM): the whole sweep stops
                    raise KeyboardInterrupt from None
                error = "training stopped"
            else:
                error = None
        if error is not None:
            lines = (work_dir / TRIAL_LOG).read_text().strip().splitlines()
            error = lines[-1] if lines else error
            trial.set_user_attr("error", error)
            raise TrialFailed(error)
        trial.set_user_attr("params", summary["params"])
        trial.set_user_attr("arch", summary["config"]["arch"])
        return summary["val_loss"]  # the kept (best-validation) model's loss

    return objective


def describe(params):
    return " ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in params.items())


def print_trial(study, trial):
    """optimize's callback: one line per finished trial."""
    state = trial.state.name.lower()
    if state == "complete":
        outcome = f"val {trial.value:.4f}, {trial.user_attrs.get('params', 0):,} parameters"
    elif state == "pruned":
        outcome = f"pruned {trial.user_attrs.get('pruned', '')}"
    else:
        outcome = f"{state}: {trial.user_attrs.get('error', f'see its {TRIAL_LOG}')}"
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    print(f"trial {trial.number}: {outcome} | {describe(trial.params) or 'no searched settings'} | {seconds:.1f} s",
          flush=True)


# ------------------------------------------------------------------------------------------ the end


def best_command(args, trial):
    """The best trial as a train command, with a fresh work dir."""
    flags = list(trial.user_attrs["train_flags"])
    if str(args.input_file) != DEFAULT_INPUT:
        flags += ["-i", str(args.input_file)]
    return "python -m wavenet_conv.train " + shlex.join([*flags, "-o", str(Path(args.work_dir) / "best")])


def report_best(args, study):
    """Counts, the best trial and its train command; False when no trial of the study has completed."""
    trials = study.get_trials(deepcopy=False)
    counts = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    if not counts.get("complete"):
        print(f"study {args.study!r}: no trial has completed yet ({summary})")
        return False
    best = study.best_trial
    print(f"study {args.study!r}: {len(trials)} trials ({summary}); best: trial {best.number}, "
          f"validation loss {best.value:.4f}, {best.user_attrs.get('params', 0):,} parameters")
    print(f"  {describe(best.params) or 'no searched settings'}")
    print(best_command(args, best))
    return True


def write_trials_table(study, path):
    """Every trial of the study as a markdown table: completed ones best first, then the others by number."""

    def cell(value, spec):
        return "" if value is None else format(value, spec)

    rows = ["| trial | state | val | params | seconds | settings | pruned or failed |", "|---|---|---|---|---|---|---|"]
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: (t.value is None, t.value or 0, t.number)):
        seconds = t.duration.total_seconds() if t.duration is not None else None
        outcome = t.user_attrs.get("pruned") or t.user_attrs.get("error") or ""
        if t.state.name == "FAIL" and not outcome:
            outcome = f"{t.user_attrs.get('worker', 'its worker')} stopped (killed or interrupted)"
        rows.append(f"| {t.number} | {t.state.name.lower()} | {cell(t.value, '.4f')} | "
                    f"{cell(t.user_attrs.get('params'), ',')} | {cell(seconds, '.1f')} | {describe(t.params)} | "
                    f"{outcome} |")
    write_atomically(path, lambda partial: partial.write_text("".join(row + "\n" for row in rows)))


def write_plots(study, work_dir, optuna):
    """history.png, loss_vs_params.png, and importance.png when two completed trials differ in a searched setting
    (a note otherwise)."""
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    plt = pyplot()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        print("note: no plots: no trial has completed")
        return
    points = [(t.user_attrs["params"], t.value, t.user_attrs.get("arch", "?")) for t in complete]
    write_atomically(work_dir / "loss_vs_params.png", lambda partial: plot_loss_vs_params(
        points, partial, reference=LECTURE_REFERENCE, title=f"{len(complete)} completed trials"))
    varying = {name for t in complete for name in t.params if len({str(u.params.get(name)) for u in complete}) > 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = plot_optimization_history(study, target_name="validation loss")
        save_figure(history.figure, work_dir / "history.png", plt)
        if len(complete) < 2 or not varying:
            print("note: no importance.png: it needs two completed trials that differ in a searched setting")
            return
        try:
            importance = plot_param_importances(study, target_name="validation loss")
            save_figure(importance.figure, work_dir / "importance.png", plt)
        except (RuntimeError, ValueError, ImportError) as e:  # unrankable settings; old Optuna wants scikit-learn
            plt.close("all")
            print(f"note: no importance.png: {first_line(e)}")


def save_figure(figure, path, plt):
    # tight: the legend sits outside the axes
    write_atomically(path, lambda partial: figure.savefig(partial, format="png", dpi=100, bbox_inches="tight"))
    plt.close(figure)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    fixed = fixed_settings(args)  # also checks the train flags after `--`
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from print_trial
    vocab, splits = load_data(args.input_file)  # a bad input file stops here, not in every trial
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(args, optuna, study_settings(args), prune_from_names(args, len(splits["train"])))
    print(f"study {args.study!r} in {hide_password(storage_url(args))}: {args.trials} trials of recipe {args.recipe} "
          f"in this worker", flush=True)
    try:
        study.optimize(make_objective(args, optuna, vocab, fixed), n_trials=args.trials, timeout=args.timeout,
                       catch=(TrialFailed,), callbacks=[print_trial])
    except KeyboardInterrupt:
        print("interrupted: the running trial is marked failed; the study keeps the others", file=sys.stderr)
        raise SystemExit(130) from None
    fail_stale_trials(study, optuna)  # a killed worker's trial counts as failed, not running, in the report
    completed = report_best(args, study)
    write_trials_table(study, work_dir / "trials.md")
    write_plots(study, work_dir, optuna)
    if not completed:
        raise SystemExit(1)


if __name__ == "__main__":
    end_start_up()
    main()
