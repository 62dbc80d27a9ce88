"""A whole training run, stage by stage: a distilling run's teacher first, then the model or a mixture's members.

    plan.json  ->  [teacher/: a mixture or a single run]  ->  a single run, or member-0 .. member-K-1

Each stage keeps its own checkpoints in its own work dir, so a --resume after a kill at any stage continues
every stage from where it stopped and runs no finished one again.
"""
from dataclasses import replace

from wavenet_conv.data.words import encode_items
from wavenet_conv.models.checkpoint import load
from wavenet_conv.training.distill import TeacherTargets
from wavenet_conv.training.members import train_mixture
from wavenet_conv.training.single import train_single
from wavenet_conv.training.trainer import count_parameters
from wavenet_conv.training.workdir import PLAN_NAME, RESUME_NAME, TEACHER_DIR, read_summary, write_plan
from wavenet_conv.utils.device import resolve_device
from wavenet_conv.utils.errors import UserError


def run_training(plan, data, started, on_validation=None):
    """Train what plan describes into plan.work_dir; the run's summary (also in its summary.json).

    on_validation(step, val_loss), for a caller such as a hyper-parameter sweep, is called after every full
    validation of a single model; an exception it raises leaves last.pt written and comes out as is."""
    device = resolve_device(plan.device)
    recipe = plan.recipe
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    write_plan(plan.work_dir, recipe, plan.seed, data.vocab)
    if recipe.members > 1:
        if on_validation is not None:
            raise UserError("--members trains each member in a worker process, which cannot report its validations")
        return train_mixture(plan, data, device, started)
    teacher, teacher_facts = distillation_teacher(plan, data, device, started) if recipe.distill else (None, None)
    return train_single(plan, data, device, started, on_validation, teacher, teacher_facts)


def teacher_plan(plan):
    """The teacher a distilling run trains first in WORK_DIR/teacher: a mixture of recipe.teacher_members models
    of the recipe (teacher_n_hidden channels), learning from the data alone."""
    recipe = plan.recipe
    teacher_dir = plan.work_dir / TEACHER_DIR
    return replace(plan, work_dir=teacher_dir, num_samples=0, target_loss=None, keep_going=False,
                   resume=plan.resume and any((teacher_dir / name).is_file() for name in (PLAN_NAME, RESUME_NAME)),
                   recipe=replace(recipe, members=recipe.teacher_members, distill=0.0, teacher=None,
                                  n_hidden=recipe.teacher_n_hidden or recipe.n_hidden))


def distillation_teacher(plan, data, device, started):
    """(distill.TeacherTargets, facts for the summary): the targets of a distilling run, from the recipe's
    teacher (a work dir or model.pt) or from a teacher trained first (teacher_plan), resumed by --resume."""
    recipe = plan.recipe
    if recipe.model != "conv":
        raise UserError("--distill trains the conv on whole names; the tree's random windows have no teacher targets")
    if recipe.teacher is not None:
        teacher, teacher_vocab = load(recipe.teacher, device)
        facts = {"path": str(recipe.teacher)}
    else:
        stage = teacher_plan(plan)
        summary = read_summary(stage.work_dir) if stage.resume else None  # a run's last file: the teacher is done
        if summary is not None:
            print(f"distilling from the teacher trained before in {str(stage.work_dir)!r}")
        else:  # a new teacher, or one a --resume continues (an unreadable summary too: its stages resume)
            print(f"distilling from a teacher trained first in {str(stage.work_dir)!r}:")
            summary = run_training(stage, data, started)
        teacher, teacher_vocab = load(stage.work_dir, device)
        facts = {"work_dir": TEACHER_DIR,
                 **{key: summary[key] for key in ("val_loss", "test_loss", "params", "seconds_total")}}
    if teacher_vocab.itos != data.vocab.itos:
        raise UserError(f"the teacher's vocabulary differs from {plan.input_file!r}'s: was it trained on this data?")
    print(f"distilling: weight {recipe.distill} on the teacher's probabilities ({count_parameters(teacher):,} "
          f"parameters), {1 - recipe.distill:g} on the data")
    items = encode_items(data.splits["train"], data.vocab)
    return TeacherTargets(teacher, items, len(data.vocab), recipe.distill), facts
