"""One model's run: train (or resume) it in its work dir, then report its losses, plot, samples and summary."""
import signal

from wavenet_conv.models.checkpoint import load_checkpoint
from wavenet_conv.training.plan import check_resumable
from wavenet_conv.training.plot import plot_losses
from wavenet_conv.training.report import final_losses, losses_line, run_facts, sample_the_run, write_summary
from wavenet_conv.training.trainer import Trainer, count_parameters
from wavenet_conv.training.workdir import RESUME_NAME
from wavenet_conv.utils.device import hardware_name


class RunStopped(Exception):
    """Ctrl-C or SIGTERM stopped the run at a step boundary, its state saved for --resume."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


def resume_state(plan):
    """The checkpoint a --resume continues (its recipe checked against the plan's), or None to start at step 0."""
    if not plan.resume:
        return None
    path = plan.work_dir / RESUME_NAME
    if not path.is_file():
        print(f"resuming {str(plan.work_dir)!r}: no checkpoint yet, starting at step 0")
        return None
    state = load_checkpoint(path)
    check_resumable(plan.recipe, state["recipe"])
    print(f"resuming {str(plan.work_dir)!r} from step {state['step']:,}")
    return state


def train_single(plan, data, device, started, on_validation=None, teacher=None, teacher_facts=None):
    """Train plan.recipe's model in plan.work_dir; the run's summary (also in summary.json). teacher:
    distill.TeacherTargets, or None to learn from the data alone. Raises RunStopped on Ctrl-C or SIGTERM."""
    recipe, work_dir = plan.recipe, plan.work_dir
    state = resume_state(plan)
    trainer = Trainer(recipe, data.vocab, data.splits, device, plan.seed, work_dir, started, plan.target_loss,
                      plan.keep_going, on_validation, teacher, compile=plan.compile, precision=plan.precision)
    if state is not None:
        trainer.restore(state)
    else:
        (work_dir / "metrics.jsonl").unlink(missing_ok=True)
    params = count_parameters(trainer.model)
    print(f"recipe {recipe.name}: {recipe.model} model, {recipe.arch} arch, {params:,} parameters, "
          f"{trainer.max_steps:,} steps of {recipe.batch_size} {trainer.batches.unit}, on {hardware_name(device)}")
    stopped_by = trainer.run()
    seconds = trainer.elapsed()
    if stopped_by is not None:
        raise RunStopped(stopped_by, f"{signal.Signals(stopped_by).name} at step {trainer.step:,}: saved "
                                     f"{str(work_dir / RESUME_NAME)!r}; continue with --resume")

    model, kept_step = trainer.kept_model()
    losses = final_losses(model, data.splits, data.vocab)
    print(losses_line(losses, f"model of step {kept_step:,}") + f"; {trainer.step:,} steps in {seconds:.1f} s"
          + (f"; target reached at {trainer.seconds_to_target:.1f} s" if trainer.seconds_to_target else ""))
    plot_losses(trainer.train_losses, trainer.val_points, work_dir / "loss.png",
                title=f"{recipe.name} recipe, {recipe.model}, {recipe.arch}, {params:,} parameters")
    sample_the_run(plan, model, data)
    summary = {
        "train_loss": losses["train"], "val_loss": losses["val"], "test_loss": losses["test"],
        "params": params, "steps": trainer.step, "kept_step": kept_step,
        "seconds": seconds,  # from the command's start to the end of training: start-up, data, evaluations
        "seconds_to_target": trainer.seconds_to_target, "target_loss": plan.target_loss,
        "seconds_total": trainer.elapsed(),  # also the final evaluation, the plot and the samples
        "precision": plan.precision, "compile": plan.compile,
        **({"compilations": trainer.compilations()} if plan.compile else {}),  # graphs, recompilations included
        **run_facts(plan, device, model.config),
        **({"teacher": teacher_facts} if teacher_facts else {}),
    }
    write_summary(work_dir, summary)
    return summary
