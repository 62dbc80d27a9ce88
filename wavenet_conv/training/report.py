"""What a run reports when it ends: its losses over every prediction of each split, samples and summary.json."""
import json
from pathlib import Path

import torch
from tqdm import tqdm

from wavenet_conv.data.words import item_lengths, sample_items
from wavenet_conv.inference.evaluation import SplitEvaluator
from wavenet_conv.inference.sampling import describe_samples, sample
from wavenet_conv.training.trainer import output_is_terminal
from wavenet_conv.training.workdir import SUMMARY_NAME
from wavenet_conv.utils.device import hardware_name
from wavenet_conv.utils.files import write_atomically

FINAL_SAMPLE_ITEMS = 100_000  # the final train and test losses of bigger splits are over a sample of this many


def final_losses(model, splits, vocab):
    """{split: loss} of the model a run reports, over every prediction of each split; on an input of millions
    of lines the train and test losses are over a fixed sample of FINAL_SAMPLE_ITEMS items (the validation loss,
    which chose the model, stays over every item)."""
    chosen = {}
    for name, items in splits.items():
        chosen[name] = items if name == "val" else sample_items(items, FINAL_SAMPLE_ITEMS)
        if len(chosen[name]) < len(items):
            print(f"the final {name} loss is over a fixed sample of {len(chosen[name]):,} of its {len(items):,} items")
    return {name: SplitEvaluator(items, vocab).loss(model)
            for name, items in tqdm(chosen.items(), desc="final evaluation", disable=not output_is_terminal(),
                                    leave=False)}


def losses_line(losses, note):
    return f"train {losses['train']:.4f} | val {losses['val']:.4f} | test {losses['test']:.4f} ({note})"


def write_samples(model, vocab, train_words, path, num_samples, seed):
    """samples.txt: the lines `python -m wavenet_conv.sample` prints for the same model and seed."""
    generator = torch.Generator().manual_seed(seed)
    names = sample(model, vocab, num_samples, generator=generator, max_len=2 * int(item_lengths(train_words).max()))
    lines = describe_samples(names, train_words)
    Path(path).write_text("".join(line + "\n" for line in lines))
    return lines


def sample_the_run(plan, model, data):
    """The run's samples.txt (plan.num_samples names), its lines printed too."""
    if plan.num_samples:
        for line in write_samples(model, data.vocab, data.splits["train"], plan.work_dir / "samples.txt",
                                  plan.num_samples, plan.seed):
            print(line)


def run_facts(plan, device, config):
    """The summary's description of the run: where it ran, the model, the recipe and the command."""
    return {
        "device": device.type, "hardware": hardware_name(device), "torch": torch.__version__,
        "model": plan.recipe.model, "recipe": plan.recipe.name, "config": config.to_dict(),
        "settings": plan.recipe.to_dict(), "seed": plan.seed, "input_file": str(plan.input_file),
        "command": plan.command,
    }


def write_summary(work_dir, summary):
    write_atomically(Path(work_dir) / SUMMARY_NAME, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
