"""Training recipes: the lecture's, step for step, and the whole-name recipes of this project.

A recipe is everything `python -m wavenet_conv.train` needs besides the data: model size, batching,
optimizer, learning-rate schedule, run length and evaluation interval. Command-line flags override fields.
"""
from dataclasses import asdict, dataclass, fields, replace

from wavenet_conv.utils.errors import UserError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    model: str = "conv"  # conv: whole names, every position at once; tree: random block_size windows
    arch: str = "lecture"  # lecture: makemore part 5's levels; gated: WaveNet's gated residual blocks with skips
    dropout: float = 0.0  # gated arch only: dropout on each level's gated activations
    n_embd: int = 24
    n_hidden: int = 128
    block_size: int = 8
    batch_size: int = 32  # names for the conv, windows for the tree
    batching: str = "random"  # conv: random names per batch, or "bucketed" by length (batch norm then leaks lengths)
    max_steps: int = None  # None: `epochs` passes over the training names
    epochs: float = None
    optimizer: str = "sgd"  # sgd: the lecture's `p.data += -lr * p.grad`; adamw: torch.optim.AdamW
    learning_rate: float = 0.1
    # step: lr, then lr / 10 for the last quarter (the lecture); cosine or linear: warm-up, then that decay
    schedule: str = "step"
    warmup_fraction: float = 0.0  # share of the steps with linearly rising lr (cosine and linear)
    final_lr_fraction: float = 0.0  # the decay ends at learning_rate * final_lr_fraction
    weight_decay: float = 0.0  # AdamW's decoupled decay, on the matrices only (not embeddings, biases, BN)
    betas: tuple = (0.9, 0.999)
    bn_momentum: float = 0.1  # momentum of the batch-norm running statistics
    init: str = "lecture"  # lecture: the tree's init after torch.manual_seed (the conv converted from it); torch: nn defaults
    eval_interval: int = 10000  # steps between full validation evaluations
    log_interval: int = 10000  # steps between progress lines (the lecture prints every 10000)
    select: str = "best"  # best: keep the best-validation weights; last: the final weights (as the lecture reports)
    members: int = 1  # above 1: that many runs with seeds seed, seed + 1, ..., the model the mixture of their predictions
    distill: float = 0.0  # weight of a teacher's predicted probabilities in the loss (distill.py); 0: the data alone
    teacher: str = None  # the teacher's work dir or model.pt; None (with distill): trained first, in WORK_DIR/teacher
    teacher_members: int = 2  # the teacher trained first: a mixture of this many models of this recipe,
    teacher_n_hidden: int = None  # with this many hidden channels (None: the recipe's)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        d = {k: tuple(v) if k == "betas" else v for k, v in d.items() if k in known}
        return cls(**d)


LECTURE = Recipe(
    name="lecture",
    description="makemore part 5: the tree on random 8-character windows, 200,000 SGD steps of 32, lr 0.1 then 0.01",
    model="tree",
    batch_size=32,
    max_steps=200_000,
    optimizer="sgd",
    learning_rate=0.1,
    schedule="step",
    eval_interval=10_000,
    log_interval=10_000,
    select="last",
)

# the lecture's levels, n_embd 36 (level 0 is a table of token pairs, so a wider embedding costs next to nothing):
# the lecture's val 1.9937 within 7.5 epochs on each of 10 seeds, 0.0013-0.0052 below it at the end; 7.25 epochs
# missed it on 1 seed of 10, 7 on 3 (docs/training.md)
FAST = Recipe(
    name="fast",
    description="the conv on random batches of whole names, AdamW (lr 2e-2, betas 0.8/0.99, weight decay 0.2), "
                "warm-up and linear decay, 7.5 epochs",
    model="conv",
    n_embd=36,
    batch_size=256,
    epochs=7.5,
    optimizer="adamw",
    learning_rate=2e-2,
    betas=(0.8, 0.99),
    schedule="linear",
    warmup_fraction=0.02,
    weight_decay=0.2,
    init="torch",
    # the loss falls fastest at the end of the decay: earlier validations only draw the curve, at ~2 steps' cost each
    eval_interval=150,
    log_interval=100,
)

# the lowest validation loss we found at <= 80K parameters, distilled (distill.py) from a mixture of two wider
# models that the command trains first, two at a time; AdamW with cosine decay, longer
QUALITY = replace(
    FAST,
    name="quality",
    description="the lowest validation loss at <= 80K parameters: n_embd 32, 30 epochs of 128 names, lr 5e-3, "
                "distilled from a mixture of 2 models of n_hidden 192 trained first",
    n_embd=32,
    batch_size=128,
    epochs=30,
    learning_rate=5e-3,
    betas=(0.9, 0.999),
    schedule="cosine",
    weight_decay=0.5,
    eval_interval=200,
    log_interval=1000,
    distill=0.8,
    teacher_members=2,
    teacher_n_hidden=192,
)

# the lowest validation loss we found in <= 10 minutes of training on a 2-core CPU: a mixture of 6 models,
# each trained as quality but with 192 hidden channels, two at a time in one-thread processes
LARGE = replace(
    QUALITY,
    name="large",
    description="the lowest validation loss found in 10 minutes on 2 CPU cores: the mixture of 6 models "
                "(n_hidden 192, 167K parameters each) trained as quality",
    n_hidden=192,
    members=6,
    distill=0.0,
)

RECIPES = {r.name: r for r in (FAST, LECTURE, QUALITY, LARGE)}
DEFAULT_RECIPE = FAST.name


def get_recipe(name, **overrides):
    """The named recipe with the given fields replaced (None values leave a field as it is)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
