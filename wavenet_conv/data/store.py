"""Items encoded once into a compact token file, read through numpy.memmap: inputs of millions of lines in
bounded memory.

A line costs its tokens (1 byte each, 2 for vocabularies over 255 characters) plus an 8-byte offset, instead of
the ~640 bytes of a Python string and a list of Python ints. The encoding streams the file in blocks, so its
memory is bounded by the block, not the file. The result is cached under a directory named by the input's
sha256 (WAVENET_CONV_CACHE, else $XDG_CACHE_HOME/wavenet_conv, else ~/.cache/wavenet_conv): a second run on the
same file maps it in well under a second.

    cache/<sha256>/tokens.npy    uint8 or uint16, every item's tokens back to back
    cache/<sha256>/offsets.npy   int64, n + 1: item i is tokens[offsets[i]:offsets[i + 1]]
    cache/<sha256>/vocab.json    the vocabulary's characters, token 0 the boundary '.'

The split is the lecture's (data/words.py split_words: random.seed(42), shuffle, 80 / 10 / 10), applied to item
indices: the same items land in the same split as with the words themselves.
"""
import functools
import json
import os
import random
from pathlib import Path

import numpy as np

from wavenet_conv.data.download import sha256_of
from wavenet_conv.data.words import BOUNDARY, Vocab, read_words
from wavenet_conv.utils.errors import DatasetError
from wavenet_conv.utils.files import write_atomically

BLOCK_BYTES = 1 << 23  # the text encoded at a time: 8 MiB
FORMAT = 1  # the cache layout's version: a change makes every cached store stale


def cache_root():
    root = os.environ.get("WAVENET_CONV_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wavenet_conv"


def text_blocks(path):
    """The file's text in blocks of whole lines (UTF-8); DatasetError on bytes that are not UTF-8."""
    offset, rest = 0, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            data = rest + block
            if not block:
                cut = len(data)
            else:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
            try:
                yield data[:cut].decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"input file {str(path)!r} is not UTF-8 text (bad byte at offset "
                                   f"{offset + e.start})") from None
            offset += cut
            rest = data[cut:]
            if not block:
                return


def stripped_lines(text):
    """The non-blank, stripped lines of a block, joined by '\\n' (read_words's items)."""
    return "\n".join(line for line in (raw.strip() for raw in text.splitlines()) if line)


class ItemStore:
    """Every item of an input file as tokens: `tokens` (every item's back to back) and `offsets` (n + 1)."""

    def __init__(self, tokens, offsets, vocab, directory=None):
        # plain arrays over the mapped files: numpy.memmap's subclass costs ~1 us on every slice
        self.tokens = np.asarray(tokens)  # uint8 or uint16, memory-mapped
        self.offsets = np.asarray(offsets)  # int64, n + 1, memory-mapped
        self.vocab = vocab
        self.directory = directory  # where it is cached (None: held in memory)

    def __len__(self):
        return len(self.offsets) - 1

    @classmethod
    def open(cls, input_file):
        """The store of input_file, built and cached on first use (read_words's checks and messages apply)."""
        path = Path(input_file)
        if not path.is_file():
            read_words(path)  # its one-line error for a missing file, a directory
        directory = cache_root() / f"{sha256_of(path)}-v{FORMAT}"
        if not (directory / "vocab.json").is_file():  # written last: its presence means the store is whole
            build(path, directory)
        itos = json.loads((directory / "vocab.json").read_text())
        return cls(np.load(directory / "tokens.npy", mmap_mode="r"), np.load(directory / "offsets.npy", mmap_mode="r"),
                   Vocab(tuple(itos)), directory)

    def splits(self, seed=42):
        """(train, val, test): the lecture's split of the items (split_words's, on indices), its order cached
        beside the store."""
        path = self.directory / f"order-{seed}.npy" if self.directory is not None else None
        if path is not None and path.is_file():
            order = np.asarray(np.load(path, mmap_mode="r"))
        else:
            order = list(range(len(self)))
            random.Random(seed).shuffle(order)  # the permutation split_words makes of the same number of words
            order = np.array(order, dtype=np.int64)
            if path is not None:
                write_atomically(path, lambda tmp: save_array(tmp, order))
        n1, n2 = int(0.8 * len(order)), int(0.9 * len(order))
        return ItemSplit(self, order[:n1]), ItemSplit(self, order[n1:n2]), ItemSplit(self, order[n2:])


def save_array(path, array):
    with open(path, "wb") as f:  # a file object: np.save would add .npy to the temporary's name
        np.save(f, array)


def build(path, directory):
    """Encode the file into directory (tokens.npy, offsets.npy, vocab.json), streaming it twice: once for its
    characters, once to write their tokens."""
    characters, count = set(), 0
    for text in text_blocks(path):
        lines = stripped_lines(text)
        characters.update(lines)
        count += lines.count("\n") + 1 if lines else 0
    characters.discard("\n")
    if count == 0:
        raise DatasetError(f"input file {str(path)!r} has no items (it is empty or holds only blank lines)")
    itos = (BOUNDARY,) + tuple(sorted(characters))
    dtype = np.uint8 if len(itos) <= 256 else np.uint16
    codepoints = np.array([ord(ch) for ch in itos[1:]], dtype=np.uint32)  # sorted, as the characters are
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".building-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    offsets = np.lib.format.open_memmap(tmp / "offsets.npy", mode="w+", dtype=np.int64, shape=(count + 1,))
    with open(tmp / "tokens.raw", "wb") as raw:
        item, position = 0, 0
        offsets[0] = 0
        for text in text_blocks(path):
            lines = stripped_lines(text)
            if not lines:
                continue
            points = np.frombuffer(lines.encode("utf-32-le"), dtype=np.uint32)
            breaks = points == ord("\n")
            lengths = np.diff(np.flatnonzero(np.concatenate([[True], breaks, [True]]))) - 1  # per line
            tokens = (np.searchsorted(codepoints, points[~breaks]) + 1).astype(dtype)  # '.' in an item: its own token
            raw.write(tokens.tobytes())
            offsets[item + 1 : item + 1 + len(lengths)] = position + np.cumsum(lengths)
            item += len(lengths)
            position += len(tokens)
    offsets.flush()
    del offsets
    tokens = np.fromfile(tmp / "tokens.raw", dtype=dtype) if position < (1 << 28) else None
    if tokens is not None:
        np.save(tmp / "tokens.npy", tokens)
    else:  # too large to hold twice: copy in chunks into a mapped .npy
        mapped = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=dtype, shape=(position,))
        source = np.memmap(tmp / "tokens.raw", dtype=dtype, mode="r")
        for start in range(0, position, 1 << 26):
            mapped[start : start + (1 << 26)] = source[start : start + (1 << 26)]
        mapped.flush()
        del mapped, source
    (tmp / "tokens.raw").unlink()
    for name in ("tokens.npy", "offsets.npy"):
        os.replace(tmp / name, directory / name)
    tmp.rmdir()
    write_atomically(directory / "vocab.json", lambda f: f.write_text(json.dumps(list(itos))))


class ItemSplit:
    """Some of a store's items (by index), as the training and evaluation code takes items: `len`, and
    `split[i]`, item i's tokens (a list of ints, as data/words.encode_items gives); iterating gives the items as
    text (as the words of split_words), `word in split` asks whether an item spells it."""

    def __init__(self, store, index):
        self.store = store
        self.index = index  # int64: store item of each of this split's items

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        item = self.index[i]
        return self.store.tokens[self.store.offsets[item] : self.store.offsets[item + 1]].tolist()

    def token_runs(self, chosen):
        """(tokens, lengths) of the chosen items (b), their tokens back to back (numpy int64): one gather from
        the token array, no list per item."""
        items = self.index[np.asarray(chosen, dtype=np.int64)]  # b
        starts = self.store.offsets[items]  # b
        lengths = self.store.offsets[items + 1] - starts  # b
        item_starts = np.cumsum(lengths) - lengths  # b: each item's first token in the result
        positions = np.arange(int(lengths.sum())) + np.repeat(starts - item_starts, lengths)  # n
        return self.store.tokens[positions].astype(np.int64), lengths

    @functools.cached_property
    def lengths(self):
        """Each item's number of tokens (numpy int64)."""
        offsets = self.store.offsets
        return offsets[self.index + 1] - offsets[self.index]

    def __iter__(self):
        itos = self.store.vocab.itos
        for i in range(len(self)):
            yield "".join(itos[token] for token in self[i])

    def __contains__(self, word):
        try:
            tokens = np.array(self.store.vocab.encode(word), dtype=np.int64)
        except DatasetError:
            return False
        same_length = self.index[self.lengths == len(tokens)]
        if len(same_length) == 0:
            return False
        if len(tokens) == 0:
            return True
        positions = self.store.offsets[same_length][:, None] + np.arange(len(tokens))  # m L
        return bool((self.store.tokens[positions] == tokens).all(axis=1).any())
