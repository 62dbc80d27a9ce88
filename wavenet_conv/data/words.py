"""Items, one per line: the lecture's vocabulary and split, windows for the tree, whole items for the conv.

names.txt (makemore's 32,033 names) ships in the repository's data/ folder and is the default input.

Shape legend: n examples, b batch, t time.
"""
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wavenet_conv.utils.errors import DatasetError

DEFAULT_INPUT = "data/names.txt"  # relative to the repository's root, where it ships
BOUNDARY = "."  # token 0: the start padding before an item and the end marker after it
IGNORE_INDEX = -1  # target of right padding (makemore's convention)


def read_words(path=DEFAULT_INPUT):
    """The non-blank, stripped lines of a UTF-8 text file; DatasetError with a one-line reason otherwise."""
    path = Path(path)
    if not path.exists():
        if path == Path(DEFAULT_INPUT):
            hint = " (it ships in the repository: run from the repository's root, or give --input-file FILE)"
        elif path.name == "names.txt":
            hint = f" (`python -m wavenet_conv.data --download -o {path}` fetches makemore's names.txt)"
        else:
            hint = ""
        raise DatasetError(f"input file {str(path)!r} does not exist{hint}")
    if path.is_dir():
        raise DatasetError(f"input file {str(path)!r} is a directory, not a text file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"input file {str(path)!r} is not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise DatasetError(f"cannot read input file {str(path)!r}: {e.strerror}") from None
    words = [line.strip() for line in text.splitlines()]
    words = [w for w in words if w]
    if not words:
        raise DatasetError(f"input file {str(path)!r} has no items (it is empty or holds only blank lines)")
    return words


@dataclass(frozen=True)
class Vocab:
    """Token 0 is the boundary '.', then the sorted characters of the data (names.txt: a=1 ... z=26)."""

    itos: tuple

    @classmethod
    def from_words(cls, words):
        return cls((BOUNDARY,) + tuple(sorted(set("".join(words)))))

    def __post_init__(self):
        object.__setattr__(self, "itos", tuple(self.itos))
        # a data character equal to '.' gets its own token; token 0 is only ever the boundary
        object.__setattr__(self, "stoi", {ch: i for i, ch in enumerate(self.itos) if i > 0})

    def __len__(self):
        return len(self.itos)

    def encode(self, text):
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise DatasetError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids):
        return "".join(self.itos[int(i)] for i in ids)


def split_words(words, seed=42):
    """The lecture's split: random.seed(42), shuffle, then 80% train, 10% val, 10% test."""
    words = list(words)
    random.seed(seed)
    random.shuffle(words)
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    return words[:n1], words[n1:n2], words[n2:]


def build_windows(words, vocab, block_size):
    """The lecture's build_dataset: every next-character prediction with its block_size context."""
    xs, ys = [], []
    for w in words:
        context = [0] * block_size
        for ix in vocab.encode(w) + [0]:
            xs.append(context)
            ys.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(xs, dtype=torch.long).reshape(-1, block_size), torch.tensor(ys, dtype=torch.long)  # n t, n


def encode_items(words, vocab):
    """Whole items as token lists [w1 .. wL]; the model input adds the leading '.' and the target the final one.
    Items of a token store (data/store.py ItemSplit) are encoded already: they are returned as they are."""
    if hasattr(words, "store"):
        return words
    return [vocab.encode(w) for w in words]


def item_lengths(items):
    """Each item's number of characters (numpy int64, b): a token store's split (data/store.py) holds them and
    reads no item; a list of words or of token lists is counted."""
    if hasattr(items, "lengths"):
        return items.lengths
    return np.fromiter((len(item) for item in items), dtype=np.int64, count=len(items))


def sample_items(items, count, seed=0):
    """A fixed random `count` of the items (all of them when there are no more), in their order: a list's, or a
    token store's split (data/store.py)."""
    if len(items) <= count:
        return items
    chosen = sorted(random.Random(seed).sample(range(len(items)), count))
    if hasattr(items, "store"):
        return type(items)(items.store, items.index[chosen])
    return [items[i] for i in chosen]


def pad_items(items, chosen=None):
    """x = [0, w1..wL], y = [w1..wL, 0], right-padded with x = 0 and y = -1 to the longest item: of `items`, or
    of items[i] for i in `chosen` (a token store's split reads those straight from its token array)."""
    if hasattr(items, "token_runs"):
        tokens, lengths = items.token_runs(range(len(items)) if chosen is None else chosen)
    else:
        chosen_items = items if chosen is None else [items[i] for i in chosen]
        lengths = item_lengths(chosen_items)
        tokens = np.fromiter((token for item in chosen_items for token in item), dtype=np.int64,
                             count=int(lengths.sum()))
    return pad_token_runs(tokens, lengths)


def pad_token_runs(tokens, lengths):
    """pad_items of items that lie back to back in `tokens` (numpy), of `lengths` (b) tokens each."""
    b = len(lengths)
    t = int(lengths.max(initial=0)) + 1
    is_token = np.arange(t) < lengths[:, None]  # b t: the item's own characters, from position 0
    x = np.zeros((b, t), dtype=np.int64)  # b t
    y = np.full((b, t), IGNORE_INDEX, dtype=np.int64)  # b t
    x[:, 1:][is_token[:, :-1]] = tokens  # after the leading '.'
    y[is_token] = tokens
    y[np.arange(b), lengths] = 0  # the end marker
    return torch.from_numpy(x), torch.from_numpy(y)


def bucketed_batches(items, batch_size, generator=None, pool_batches=64, shuffle=True):
    """Batches of items of similar length, so that right padding wastes little.

    Items are shuffled, then sorted by length within pools of `pool_batches` batches and cut into
    batches; the batch order is shuffled again. Returns a list of index lists into `items`.
    """
    n = len(items)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, n, pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(items[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def count_predictions(items):
    """Next-character predictions in a list of items: one per character plus the end marker."""
    return sum(len(it) + 1 for it in items)
