"""Sample names from a trained model (inference/sampling.py: three methods that return the same names).

    python -m wavenet_conv.sample -o out -n 20 --temperature 0.8 --prefix ja
"""
import gc

if __name__ == "__main__":
    gc.disable()  # until the imports are done: utils/processes.py, end_start_up

from pathlib import Path

import numpy as np
import torch

from wavenet_conv.data.store import ItemStore
from wavenet_conv.data.words import DEFAULT_INPUT
from wavenet_conv.inference.sampling import METHODS, SampleError, describe_samples, sample
from wavenet_conv.models.checkpoint import load
from wavenet_conv.training.workdir import trained_input_file
from wavenet_conv.utils.device import DEVICE_CHOICES, resolve_device
from wavenet_conv.utils.errors import ArgumentParser, exit_on_user_error
from wavenet_conv.utils.processes import end_start_up


def open_training_data(input_file, explicit):
    """The input file's token store (data/store.py: encoded once, cached, memory-mapped, so a file of millions of
    lines is not read into strings), or None when the default file is absent (new names are then not marked)."""
    if not explicit and not Path(input_file).exists():
        return None
    return ItemStore.open(input_file)


@exit_on_user_error
def main(argv=None):
    parser = ArgumentParser(prog="python -m wavenet_conv.sample", description="Sample names from a trained wavenet_conv model.")
    parser.add_argument("--work-dir", "-o", required=True, help="work dir (or model.pt) of the trained model")
    parser.add_argument("--num-samples", "-n", type=int, default=20, help="number of names to sample")
    parser.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this (> 0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k likeliest characters")
    parser.add_argument("--prefix", default="", help="every name starts with this")
    parser.add_argument("--max-len", type=int, default=None,
                        help="cut names at this many characters (default: the prefix plus twice the longest item)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the sampling generator")
    parser.add_argument("--method", default=None, choices=METHODS,
                        help="sampler: all return the same names (default: cached, or full for the gated arch)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="device to sample on (auto: CUDA when it works); the names do not depend on it")
    parser.add_argument("--input-file", "-i", default=None,
                        help=f"training data, to mark new names (default: the file the run trained on, as its "
                             f"summary.json records it, else {DEFAULT_INPUT}; skipped if absent)")
    args = parser.parse_args(argv)
    if args.num_samples < 0:
        raise SampleError(f"--num-samples must be non-negative, got {args.num_samples}")

    model, vocab = load(args.work_dir, resolve_device(args.device))
    input_file = args.input_file or trained_input_file(args.work_dir) or DEFAULT_INPUT
    store = open_training_data(input_file, explicit=args.input_file is not None)
    max_len = args.max_len
    if store is not None:
        unseen = set(store.vocab.itos) - set(vocab.itos)
        if unseen:
            raise SampleError(f"the input file has characters the model never saw ({''.join(sorted(unseen))!r}): "
                              f"is it the training data?")
        if max_len is None:
            max_len = len(args.prefix) + 2 * int(np.diff(store.offsets).max())  # twice the longest item
    generator = torch.Generator().manual_seed(args.seed)  # on the CPU: the same seed, the same names anywhere
    names = sample(model, vocab, args.num_samples, method=args.method, generator=generator,
                   temperature=args.temperature, top_k=args.top_k, prefix=args.prefix, max_len=max_len)
    if store is None:
        for name in names:
            print(name)
        print(f"(no training data at {input_file}: cannot tell new names; pass --input-file)")
        return
    for line in describe_samples(names, store.splits()[0]):  # the training split's items
        print(line)


if __name__ == "__main__":
    end_start_up()
    main()
