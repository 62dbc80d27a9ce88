"""Evaluate a trained model: its loss over every prediction of the train, val and test splits.

    python -m wavenet_conv.evaluate -o out      # train / val / test loss of the model trained in out/

The splits are those the run trained on: its input file (as its summary.json records it) read as training reads
it, so the numbers are the run's own (on an input of millions of lines the train and test losses are over the
same fixed sample as the run's report).
"""
import gc

if __name__ == "__main__":
    gc.disable()  # until the imports are done: utils/processes.py, end_start_up

from wavenet_conv.data.words import DEFAULT_INPUT
from wavenet_conv.inference.evaluation import check_vocab
from wavenet_conv.models.checkpoint import load
from wavenet_conv.training.plan import RunData
from wavenet_conv.training.report import final_losses
from wavenet_conv.training.workdir import trained_input_file
from wavenet_conv.utils.device import DEVICE_CHOICES, resolve_device
from wavenet_conv.utils.errors import ArgumentParser, DatasetError, exit_on_user_error
from wavenet_conv.utils.processes import end_start_up


def model_splits(input_file, vocab):
    """{split: items} of the input file for a model of `vocab`: the token store's, as training reads them, when
    the file's vocabulary is the model's; otherwise the splits' words (the store's items as text), the file's
    characters checked against the model's."""
    data = RunData.read(input_file)
    if data.vocab.itos == vocab.itos:
        return data.splits
    check_vocab(data.vocab.itos[1:], vocab)  # the characters the file holds
    return {name: list(items) for name, items in data.splits.items()}


@exit_on_user_error
def main(argv=None):
    parser = ArgumentParser(prog="python -m wavenet_conv.evaluate", description="Evaluate a trained wavenet_conv model on the full splits.")
    parser.add_argument("--work-dir", "-o", required=True, help="work dir (or model.pt) of the trained model")
    parser.add_argument("--input-file", "-i", default=None,
                        help=f"the training data, one item per line (default: the file the run trained on, as its "
                             f"summary.json records it, else {DEFAULT_INPUT})")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="device to evaluate on")
    args = parser.parse_args(argv)
    model, vocab = load(args.work_dir, resolve_device(args.device))
    input_file = args.input_file or trained_input_file(args.work_dir) or DEFAULT_INPUT
    try:
        splits = model_splits(input_file, vocab)
    except DatasetError as e:
        if args.input_file is None and input_file != DEFAULT_INPUT:
            raise DatasetError(f"{e} (the run trained on {input_file!r}; pass --input-file)") from None
        raise
    losses = final_losses(model, splits, vocab)
    print(" ".join(f"{name} {loss:.4f}" for name, loss in losses.items()))


if __name__ == "__main__":
    end_start_up()
    main()
