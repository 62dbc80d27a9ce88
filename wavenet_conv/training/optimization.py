"""The recipes' optimizers and learning-rate schedules, from torch.optim and torch.optim.lr_scheduler.

The lecture: torch.optim.SGD without momentum, whose update is the lecture's `p.data += -lr * p.grad` up to
float rounding (SGD computes it as one fused multiply-add). The whole-name recipes: torch.optim.AdamW with
decoupled weight decay on the matrices only, its fused kernel (on a CPU ~2x faster a step than foreach
at 80K parameters; it rounds differently). A LambdaLR scales the recipe's learning rate at every step; the
optimizer's and the scheduler's state_dicts go into the checkpoint, so a resumed run takes the same steps.
"""
import math

import torch

from wavenet_conv.utils.errors import UserError


def make_optimizer(recipe, model):
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=0.0)
    if recipe.optimizer == "adamw":
        # decay the matrices only: embeddings, biases and batch-norm gains are not shrunk
        named = list(model.named_parameters())
        decayed = [p for name, p in named if p.ndim >= 2 and "embedding" not in name]
        others = [p for name, p in named if not (p.ndim >= 2 and "embedding" not in name)]
        groups = [{"params": decayed, "weight_decay": recipe.weight_decay}, {"params": others, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=tuple(recipe.betas),
                                 fused=True)  # one kernel for every parameter, CPU or CUDA
    raise UserError(f"unknown optimizer {recipe.optimizer!r}")


def learning_rate_multiplier(step, recipe, max_steps):
    """The factor on recipe.learning_rate for `step`, the 0-based index of the step about to be taken."""
    if recipe.schedule == "step":
        # the lecture: `lr = 0.1 if i < 150000 else 0.01` over 200,000 steps
        return 1.0 if step < int(0.75 * max_steps) else 0.1
    if recipe.schedule in ("cosine", "linear"):
        warmup = int(recipe.warmup_fraction * max_steps)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, max_steps - warmup)
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if recipe.schedule == "cosine" else 1 - progress
        floor = recipe.final_lr_fraction
        return floor + (1 - floor) * decay
    raise UserError(f"unknown learning-rate schedule {recipe.schedule!r}")


def make_scheduler(optimizer, recipe, max_steps):
    """A LambdaLR whose lr for step i is recipe.learning_rate * learning_rate_multiplier(i); step it after each step."""
    learning_rate_multiplier(0, recipe, max_steps)  # an unknown schedule is a user error now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_multiplier(step, recipe, max_steps))
