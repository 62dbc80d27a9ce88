"""What a run is, before it starts: its recipe and seed, where it writes, and how much of it is done already.

A RunPlan is plain data (it crosses into worker processes): the command line builds one, a mixture builds one
per member, a distilling run one for its teacher.
"""
from dataclasses import dataclass, replace
from pathlib import Path

from wavenet_conv.data.store import ItemStore
from wavenet_conv.data.words import Vocab
from wavenet_conv.inference.evaluation import SPLIT_NAMES
from wavenet_conv.training.recipes import Recipe
from wavenet_conv.utils.errors import CheckpointError, DatasetError

# recipe fields that may change when a run is resumed; the others describe the run itself and must match
RESUMABLE = ("max_steps", "epochs", "eval_interval", "log_interval")
MIN_ITEMS = 10  # the fewest items a file may have: 8 to train on, 1 to validate, 1 to test


@dataclass(frozen=True)
class RunPlan:
    recipe: Recipe
    seed: int
    work_dir: Path
    input_file: str
    device: str = "auto"  # a --device choice, resolved by each process that trains
    threads: str = "auto"  # of each member's worker process; the command's own are set before it plans
    workers: str = "auto"  # member processes at once
    resume: bool = False  # continue from the work dir's checkpoints, where they exist
    target_loss: float = None
    keep_going: bool = False
    num_samples: int = 20
    command: str = ""  # the command line, for summary.json
    compile: bool = False  # the forward through torch.compile (utils/acceleration.py), in every process that trains
    precision: str = "fp32"  # fp32, or bf16: the forward under bfloat16 autocast


@dataclass(frozen=True)
class RunData:
    vocab: Vocab
    splits: dict  # split name -> items

    @classmethod
    def read(cls, input_file):
        """The input file's items from its token store (data/store.py: encoded once, cached, memory-mapped)."""
        store = ItemStore.open(input_file)
        if len(store) < MIN_ITEMS:
            raise DatasetError(f"{str(input_file)!r} has {len(store)} items: too few to split into train, val and "
                               f"test (at least {MIN_ITEMS})")
        return cls(store.vocab, dict(zip(SPLIT_NAMES, store.splits())))


def resumed_recipe(saved, overrides):
    """The saved recipe (a plan's or a checkpoint's dict), with the run-length and logging flags changed where
    `overrides` (field -> value or None) gives them; any other change is refused."""
    recipe = Recipe.from_dict(saved)
    changes = {}
    for name, value in overrides.items():
        if value is None or value == getattr(recipe, name):
            continue
        if name not in RESUMABLE:
            raise CheckpointError(f"--resume continues the saved run, whose {name} is {getattr(recipe, name)}, "
                                  f"not {value}")
        changes[name] = value
    if "epochs" in changes and "max_steps" not in changes:
        changes["max_steps"] = None  # the new epoch count decides the length
    return replace(recipe, **changes)


def check_resumable(recipe, saved):
    """A checkpoint continues `recipe` only where they differ in RESUMABLE fields alone."""
    differing = [name for name, value in Recipe.from_dict(saved).to_dict().items()
                 if name not in RESUMABLE and recipe.to_dict()[name] != value]
    if differing:
        raise CheckpointError(f"the checkpoint is of another run (its {differing[0]} differs)")
