"""Evaluate a trained model: its loss over every prediction of the train, val and test splits.

    python -m wavenet_conv.evaluate -o out      # train / val / test loss of the model trained in out/
"""
from wavenet_conv.data.words import DEFAULT_INPUT, read_words, split_words
from wavenet_conv.inference.evaluation import SPLIT_NAMES, check_vocab, evaluate_splits
from wavenet_conv.models.checkpoint import load
from wavenet_conv.utils.device import DEVICE_CHOICES, resolve_device
from wavenet_conv.utils.errors import ArgumentParser, exit_on_user_error


@exit_on_user_error
def main(argv=None):
    parser = ArgumentParser(prog="python -m wavenet_conv.evaluate", description="Evaluate a trained wavenet_conv model on the full splits.")
    parser.add_argument("--work-dir", "-o", required=True, help="work dir (or model.pt) of the trained model")
    parser.add_argument("--input-file", "-i", default=DEFAULT_INPUT, help="the training data (one item per line)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="device to evaluate on")
    args = parser.parse_args(argv)
    model, vocab = load(args.work_dir, resolve_device(args.device))
    words = read_words(args.input_file)
    check_vocab(words, vocab)
    losses = evaluate_splits(model, dict(zip(SPLIT_NAMES, split_words(words))), vocab)
    print(" ".join(f"{name} {loss:.4f}" for name, loss in losses.items()))


if __name__ == "__main__":
    main()
