"""The Optuna sweep on tiny models: one worker, two workers sharing one SQLite file, a worker killed mid-trial,
workers started at once on a new PostgreSQL database (a real, throwaway server), pruning, no Optuna, bad input."""
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pg_server import PostgresServer
from test_train import assert_user_error, syllable_words

from wavenet_conv import train
from wavenet_conv.models.checkpoint import load_checkpoint
from wavenet_conv.training.plot import lowest_loss_frontier

optuna = pytest.importorskip("optuna")
from wavenet_conv import sweep  # noqa: E402  (after the skip: the sweep needs optuna)

REPO = Path(__file__).resolve().parents[1]
# tiny trials: --archs lecture (the train CLI of this branch has no --arch), small fixed widths and batches
TINY = ["--archs", "lecture", "--max-steps", "40", "--", "--n-embd", "4", "--n-hidden", "12", "--batch-size", "16",
        "--eval-interval", "10", "--num-samples", "2"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def words_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(syllable_words()) + "\n")
    return path


def run(args, capsys):
    """sweep.main in-process; returns (exit status, stdout, stderr)."""
    try:
        sweep.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_train_command(line, work_dir):
    """The line is a train command that the train CLI parses, with a fresh work dir."""
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "wavenet_conv.train"]
    args = train.parse_args(words[3:])
    assert args.recipe == "fast" and args.max_steps == 40 and args.n_hidden == 12
    assert Path(args.work_dir) == Path(work_dir) / "best"
    return args


def study_trials(work_dir, name="wavenet_conv"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{work_dir / 'study.db'}").get_trials()


def test_one_worker_writes_trials_plots_and_the_best_as_a_train_command(tmp_path, words_file, capsys):
    work_dir = tmp_path / "sweep"
    code, out, err = run(["-o", work_dir, "-i", words_file, "--trials", 2, *TINY], capsys)
    assert code == 0, err
    trials = study_trials(work_dir)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        trial_dir = work_dir / f"trial-{t.number:04d}"
        assert (trial_dir / "summary.json").is_file() and (trial_dir / "trial.log").is_file()
        # searched: block size, learning rate, weight decay; fixed by the flags: not searched
        assert set(t.params) == {"block_size", "learning_rate", "weight_decay"}
    for plot in ("history.png", "importance.png", "loss_vs_params.png"):
        assert (work_dir / plot).read_bytes()[:8] == PNG
    assert {t.user_attrs["arch"] for t in trials} == {"lecture"}
    table = (work_dir / "trials.md").read_text().splitlines()
    best_first = sorted(trials, key=lambda t: t.value)
    assert [row.split(" | ")[0] for row in table[2:]] == [f"| {t.number}" for t in best_first]
    assert f"| complete | {best_first[0].value:.4f} |" in table[2]
    best = min(trials, key=lambda t: t.value)
    assert f"best: trial {best.number}, validation loss {best.value:.4f}" in out
    args = assert_train_command(out.strip().splitlines()[-1], work_dir)
    assert args.learning_rate == best.params["learning_rate"] and args.block_size == best.params["block_size"]
    assert args.input_file == str(words_file)


def test_timeout_starts_no_trial_after_it(tmp_path, words_file, capsys):
    work_dir = tmp_path / "sweep"
    code, out, err = run(["-o", work_dir, "-i", words_file, "--trials", 50, "--timeout", 1e-3, *TINY], capsys)
    assert code == 0, err
    assert [t.state.name for t in study_trials(work_dir)] == ["COMPLETE"]  # the first trial runs to its end
    assert (work_dir / "trials.md").is_file()  # and the worker still reports the study


def test_two_workers_share_one_sqlite_study(tmp_path, words_file):
    """Started at once against one new SQLite file: 2 + 2 trials of one study, each prints the best."""
    work_dir = tmp_path / "sweep"
    workers = start_workers(work_dir, words_file, 2, "--trials", 2, "--study", "shared", *TINY)
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
        assert "Traceback" not in err
        assert_train_command(out.strip().splitlines()[-1], work_dir)
    trials = study_trials(work_dir, "shared")
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(p.name for p in work_dir.glob("trial-*")) == [f"trial-{n:04d}" for n in range(4)]
    # each trial draws from seed + its number: workers with the same --seed do not repeat each other
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4


def start_workers(work_dir, words_file, count, *flags):
    command = [sys.executable, "-m", "wavenet_conv.sweep", "-o", str(work_dir), "-i", str(words_file), *map(str, flags)]
    return [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(count)]


def by_worker(trials, pid):
    return [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{pid}")]


def test_a_worker_killed_mid_trial_leaves_the_study_usable(tmp_path, words_file):
    """Two workers on one SQLite file; one is killed (SIGKILL) while it trains: the other runs all its trials, and
    marks the killed worker's trial failed once it has sent no heartbeat for the grace period."""
    work_dir = tmp_path / "sweep"
    work_dir.mkdir()
    url = f"sqlite:///{work_dir / 'study.db'}"
    optuna.create_study(study_name="killed", storage=url)  # the tables, for polling before the workers write
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name("killed")
    # trials of about a second (fewer evaluations): the kill lands in one, and the survivor's five or more after it
    # outlast the grace period (2 s, 3 s at most on SQLite's clock of whole seconds) with room to spare
    longer = ["--archs", "lecture", "--max-steps", "300", "--", "--n-embd", "4", "--n-hidden", "12", "--batch-size",
              "16", "--eval-interval", "50", "--num-samples", "2"]
    victim, survivor = start_workers(work_dir, words_file, 2, "--study", "killed", "--trials", 6,
                                     "--heartbeat-interval", 1, "--grace-period", 2, "--prune-after", 99, *longer)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the victim's trial has trained and been evaluated at least once
            running = [t for t in by_worker(storage.get_all_trials(study_id), victim.pid)
                       if t.state.name == "RUNNING" and t.intermediate_values]
            if running or time.monotonic() > deadline or victim.poll() is not None:
                break
            time.sleep(0.05)
        assert running, victim.communicate()[1] if victim.poll() is not None else "no trial of the victim ran"
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=30)
        out, err = survivor.communicate(timeout=120)
    finally:
        for worker in (victim, survivor):
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert survivor.returncode == 0, err
    assert "Traceback" not in err
    killed = running[0]
    assert f"trial {killed.number}: failed: worker " in out and f":{victim.pid} sent no heartbeat for 2 s" in out
    trials = storage.get_all_trials(study_id)
    assert [t.state.name for t in by_worker(trials, victim.pid)] == ["FAIL"]
    assert [t.state.name for t in by_worker(trials, survivor.pid)] == ["COMPLETE"] * 6
    assert len(trials) == 7 and "study 'killed': 7 trials (6 complete, 1 fail); best" in out
    row = next(line for line in (work_dir / "trials.md").read_text().splitlines()
               if line.startswith(f"| {killed.number} |"))
    assert "| fail |" in row and f":{victim.pid} stopped (killed or interrupted)" in row


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server for this module's tests (skipped without its binaries or psycopg)."""
    with PostgresServer.start_or_skip() as server:
        yield server


def test_two_workers_started_at_once_on_a_new_postgres_database(postgres, tmp_path, words_file):
    """A plain postgresql:// URL (psycopg 3, the postgres extra) and a database without tables: both workers
    create the storage, one of them losing the race and retrying, and all 2 + 2 trials complete."""
    url = postgres.create_database("two_workers")
    work_dir = tmp_path / "sweep"
    workers = start_workers(work_dir, words_file, 2, "--storage", url, "--trials", 2, *TINY)
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
        assert "Traceback" not in err
        assert f"in {url}:" in out
        assert_train_command(out.strip().splitlines()[-1], work_dir)
    trials = optuna.load_study(study_name="wavenet_conv", storage=url.replace("postgresql:", "postgresql+psycopg:")
                               ).get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)


def test_many_workers_open_one_new_postgres_database_at_once(postgres):
    """Eight workers (threads, each with its own connections) create the tables and the study of a new database
    at the same moment: every one opens the study."""
    url = postgres.create_database("eight_workers")
    args = sweep.parse_args(["--storage", url, "--study", "race"])
    start, opened, errors = threading.Barrier(8), [], []

    def open_at_once():
        start.wait()
        try:
            opened.append(sweep.open_study(args, optuna, {"flags": ["-b", "8"]}).study_name)
        except Exception as e:  # noqa: BLE001  (shown by the assert)
            errors.append(repr(e))

    threads = [threading.Thread(target=open_at_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and opened == ["race"] * 8


def test_creation_retries_a_race_and_gives_up_after_its_tries():
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    calls, pauses = [], []

    def racing(failures):
        def create():
            calls.append(1)
            if len(calls) <= len(failures):
                raise failures[len(calls) - 1]("CREATE TABLE studies", {}, Exception("already exists"))
            return "study"
        return create

    assert sweep.retry_creation(racing([IntegrityError, ProgrammingError]), sleep=pauses.append) == "study"
    assert len(calls) == 3 and len(pauses) == 2 and all(0 < p < 1 for p in pauses)
    calls.clear()
    with pytest.raises(IntegrityError):
        sweep.retry_creation(racing([IntegrityError] * 5), tries=3, sleep=pauses.append)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(OperationalError):  # not a race (a server that is down): no retry
        sweep.retry_creation(racing([OperationalError]), sleep=pauses.append)
    assert len(calls) == 1


def test_a_postgres_url_without_its_driver_says_which_extra_to_install(tmp_path, words_file, monkeypatch, capsys):
    for driver in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, driver, None)  # `import psycopg` now raises ImportError
    result = run(["-o", tmp_path / "sweep", "-i", words_file, "--storage", "postgresql://u:secret@127.0.0.1:1/db"],
                 capsys)
    assert_user_error(result, "cannot open --storage postgresql://u:***@127.0.0.1:1/db", "psycopg 3",
                      'pip install -e ".[sweep,postgres]"')
    assert "secret" not in result[2]


def enqueue_good_then_slow(work_dir, name):
    """A new study in work_dir whose first trials are a good one, then one whose learning rate is far too small
    to learn in 40 steps."""
    work_dir.mkdir()
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{work_dir / 'study.db'}")
    study.enqueue_trial({"block_size": 8, "learning_rate": 1e-2, "weight_decay": 0.1})
    study.enqueue_trial({"block_size": 8, "learning_rate": 1e-3, "weight_decay": 0.1})


def test_pruning_stops_a_trial_worse_than_the_median(tmp_path, words_file, capsys):
    work_dir = tmp_path / "sweep"
    enqueue_good_then_slow(work_dir, "prune")
    code, out, err = run(["-o", work_dir, "-i", words_file, "--study", "prune", "--trials", 2, "--prune-after", 1,
                          *TINY], capsys)
    assert code == 0, err
    first, second = study_trials(work_dir, "prune")
    assert first.state.name == "COMPLETE" and second.state.name == "PRUNED"
    assert "trial 1: pruned at step 10 (160 names)" in out
    # one completed trial cannot rank the settings: a note, no importance plot
    assert (work_dir / "history.png").is_file() and not (work_dir / "importance.png").exists()
    assert "note: no importance.png" in out
    # stopped at its first evaluation, with its checkpoint written
    assert load_checkpoint(work_dir / "trial-0001" / "last.pt")["step"] == 10


def test_no_trial_is_pruned_before_its_warm_up(tmp_path, words_file, capsys):
    """The same two trials as above, with pruning allowed only from 1 epoch of training names on: the slow
    trial is not stopped at its first evaluations, but after the warm-up."""
    work_dir = tmp_path / "sweep"
    enqueue_good_then_slow(work_dir, "warm")
    n_train = len(sweep.load_data(words_file)[1]["train"])
    code, out, err = run(["-o", work_dir, "-i", words_file, "--study", "warm", "--trials", 2, "--prune-after", 1,
                          "--prune-from-epoch", 1, *TINY], capsys)
    assert code == 0, err
    pruned = study_trials(work_dir, "warm")[1]
    assert pruned.state.name == "PRUNED"
    names = max(pruned.intermediate_values)  # its first evaluation at or past 1 epoch
    assert names >= n_train > names - 10 * 16  # evaluations every 10 steps of 16 names


def test_prune_from_defaults_to_half_the_epochs():
    assert sweep.prune_from_names(sweep.parse_args(["--epochs", "30"]), 1000) == 15_000
    assert sweep.prune_from_names(sweep.parse_args(["--epochs", "30", "--prune-from-epoch", "0"]), 1000) == 0
    assert sweep.prune_from_names(sweep.parse_args(["--max-steps", "40"]), 1000) == 0


class FakeTrial:
    def __init__(self, prune_at):
        self.prune_at, self.reports, self.user_attrs = prune_at, [], {}

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.reports[-1][0] == self.prune_at

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def test_validation_hook_reports_and_prunes():
    trial = FakeTrial(prune_at=20)
    on_validation = sweep.report_to(trial, optuna, batch_size=2)  # reported by names seen: 2 a step
    on_validation(5, 2.5)
    with pytest.raises(optuna.TrialPruned):
        on_validation(10, 2.4)
    assert trial.reports == [(10, 2.5), (20, 2.4)]


@pytest.mark.parametrize("batch_size, interval", [(32, 800), (64, 400), (128, 200), (256, 100)])
def test_trials_evaluate_after_the_same_number_of_names_at_any_batch_size(batch_size, interval):
    flags, recipe, _ = sweep.trial_plan(["--recipe", "quality", "--batch-size", str(batch_size)])
    assert flags[-2:] == ["--eval-interval", str(interval)]
    assert recipe.eval_interval == interval  # the recipe the trial is planned with is the one the flags give
    assert interval * batch_size == sweep.EVAL_EVERY_NAMES
    given = ["--recipe", "quality", "--eval-interval", "7"]
    assert sweep.trial_plan(given)[0] == given  # the user's own interval stands


def test_max_params_prunes_before_training(tmp_path, words_file, capsys):
    work_dir = tmp_path / "sweep"
    code, out, _ = run(["-o", work_dir, "-i", words_file, "--trials", 1, "--max-params", 100, *TINY], capsys)
    assert code == 1  # nothing completed
    assert "more than --max-params 100" in out and "no trial has completed" in out and "note: no plots" in out
    assert [t.state.name for t in study_trials(work_dir)] == ["PRUNED"]
    assert not (work_dir / "trial-0000").exists()


def test_without_optuna_training_works_and_the_sweep_says_how_to_install_it(tmp_path, words_file):
    script = (
        "import sys; sys.modules['optuna'] = None\n"  # `import optuna` now raises ImportError
        "import wavenet_conv, wavenet_conv.train as train\n"
        f"train.main(['-i', {str(words_file)!r}, '-o', {str(tmp_path / 'run')!r}, '--max-steps', '3', '--n-embd', '4',"
        " '--n-hidden', '8', '--batch-size', '8', '--num-samples', '1', '--threads', '1'])\n"
        "import runpy; sys.argv = ['sweep', '-o', sys.argv[1]]\n"
        "runpy.run_module('wavenet_conv.sweep', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "sweep")], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert (tmp_path / "run" / "summary.json").is_file()
    assert result.returncode == 2
    assert result.stderr == 'error: the sweep needs Optuna: pip install -e ".[sweep]"\n'


def test_bad_input(tmp_path, words_file, capsys):
    work_dir = tmp_path / "sweep"
    common = ["-o", work_dir, "-i", words_file]
    assert run([*common, "--trials", 0], capsys)[0] == 2
    assert run([*common, "--max-steps", 0], capsys)[0] == 2  # checked by the train CLI's parser
    assert run([*common, "--threads", "two"], capsys)[0] == 2
    assert run([*common, "--timeout", 0], capsys)[0] == 2
    assert run([*common, "--prune-from-epoch", -1], capsys)[0] == 2
    assert run([*common, "--heartbeat-interval", 0], capsys)[0] == 2
    assert run([*common, "--heartbeat-interval", 10, "--grace-period", 10], capsys)[0] == 2
    assert run([*common, "--archs", "lecture,wide"], capsys)[0] == 2
    assert run([*common, "--", "-o", "elsewhere"], capsys)[0] == 2
    assert_user_error(run(["-o", work_dir, "-i", tmp_path / "missing.txt"], capsys), "does not exist")
    assert_user_error(run([*common, "--storage", "not a url"], capsys), "cannot open --storage")
    assert_user_error(run([*common, "--storage", "postgresql://user:secret@localhost:1/db"], capsys),
                      "cannot open --storage")
    assert "secret" not in capsys.readouterr().err
    # a study started with other trial settings is not joined
    assert run([*common, "--trials", 1, "--study", "s", *TINY], capsys)[0] == 0
    other = [*TINY[:-1], "8"]  # --num-samples 8
    assert_user_error(run([*common, "--trials", 1, "--study", "s", *other], capsys), "other settings", "--study")


def test_search_space():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    archs = set()
    for _ in range(30):
        settings = sweep.suggest_settings(study.ask(), set(), list(sweep.ARCHS))
        archs.add(settings["arch"])
        expected = set(sweep.SEARCHED) - ({"dropout"} if settings["arch"] == "lecture" else set())
        assert settings.keys() == expected
        assert settings["block_size"] in (8, 16, 32) and 1e-3 <= settings["learning_rate"] <= 3e-2
        assert 8 <= settings["n_embd"] <= 64 and 32 <= settings["n_hidden"] <= 512
    assert archs == {"lecture", "gated"}
    # fixed settings are neither searched nor passed
    fixed = sweep.fixed_settings(sweep.parse_args(["--archs", "lecture", "--max-steps", "5", "--", "-b", "8"]))
    assert fixed == {"arch", "epochs", "batch_size", "distill"}  # no --teacher: no distillation weight to search
    assert sweep.fixed_settings(sweep.parse_args(["--", "--epochs", "2", "-l", "0.01"])) == {
        "epochs", "learning_rate", "distill"}
    # with a --teacher the weight of its probabilities is searched, in [0.5, 1]
    with_teacher = sweep.parse_args(["--recipe", "quality", "--", "--teacher", "runs/large"])
    assert "distill" not in sweep.fixed_settings(with_teacher) and "--distill" not in sweep.base_flags(with_teacher)
    assert 0.5 <= sweep.suggest_settings(study.ask(), {"arch"}, ["lecture"])["distill"] <= 1
    # one gated arch is passed, not searched, and has dropout
    settings = sweep.suggest_settings(study.ask(), fixed, ["gated"])
    assert settings.keys() == {"n_embd", "n_hidden", "block_size", "learning_rate", "weight_decay", "dropout"}
    assert sweep.base_flags(sweep.parse_args(["--archs", "gated"])) == ["--recipe", "fast", "--arch", "gated"]
    # an ensemble recipe's trials are single models of its members' settings (their validations drive the pruner)
    assert sweep.base_flags(sweep.parse_args(["--recipe", "large"]))[:4] == ["--recipe", "large", "--members", "1"]


def test_lowest_loss_frontier_keeps_each_size_that_beats_every_smaller_one():
    trials = [(5000, 2.10, "lecture"), (1000, 2.30, "lecture"), (3000, 2.40, "gated"), (3000, 2.20, "lecture"),
              (9000, 2.15, "gated")]
    assert lowest_loss_frontier(trials) == [(1000, 2.30), (3000, 2.20), (5000, 2.10)]
