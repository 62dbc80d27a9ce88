"""The token store: the same vocabulary, split and items as the words themselves, from a cache read through
numpy.memmap."""
import numpy as np
import pytest

from wavenet_conv.data import store as store_module
from wavenet_conv.data.store import ItemStore
from wavenet_conv.data.words import Vocab, encode_items, pad_items, read_words, split_words
from wavenet_conv.utils.errors import DatasetError

COMPANIES = ["O'Brien", "McDonald's", "Zoë", "Acme Inc.", "  A.B. Dick Co. ", "", "l'Oréal", "3M", "日本"] * 5


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WAVENET_CONV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("lines", [COMPANIES, [f"item{i % 37}" for i in range(1000)]])
def test_the_store_holds_the_words_items_and_split(tmp_path, lines, monkeypatch):
    path = tmp_path / "items.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(store_module, "BLOCK_BYTES", 64)  # many blocks, lines cut across them
    store = ItemStore.open(path)
    words = read_words(path)
    vocab = Vocab.from_words(words)
    assert store.vocab == vocab and len(store) == len(words)
    for split, split_of_words in zip(store.splits(), split_words(words)):
        assert list(split) == split_of_words
        assert [split[i] for i in range(len(split))] == encode_items(split_of_words, vocab)
        assert split.lengths.tolist() == [len(w) for w in split_of_words]
    train = store.splits()[0]
    assert all(word in train for word in split_words(words)[0])
    assert "not an item" not in train and "" not in train


def test_padded_batches_read_from_the_store_are_those_of_the_token_lists(tmp_path):
    """pad_items of a store's split gathers the chosen items from its token array: the same x and y as the
    token lists give, for any choice and order of items, empty items included."""
    path = tmp_path / "items.txt"
    path.write_text("\n".join(COMPANIES) + "\n", encoding="utf-8")
    train = ItemStore.open(path).splits()[0]
    lists = [train[i] for i in range(len(train))]
    assert min(map(len, lists)) <= 2 and max(map(len, lists)) > 5  # lengths differ: padding is exercised
    for chosen in (None, [3, 0, 7, 7, 1], [len(train) - 1]):
        x, y = pad_items(train, chosen)
        expected = pad_items(lists if chosen is None else [lists[i] for i in chosen])
        assert x.tolist() == expected[0].tolist() and y.tolist() == expected[1].tolist()
        assert x.dtype == y.dtype == expected[0].dtype
    assert pad_items(train, [0, 1])[0].tolist() != pad_items(train, [1, 0])[0].tolist()  # the order is kept


def test_a_second_open_reads_the_cache(tmp_path, cache):
    path = tmp_path / "items.txt"
    path.write_text("ab\ncd\n")
    first = ItemStore.open(path)
    built = {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}
    first.splits()
    second = ItemStore.open(path)
    assert isinstance(second.tokens.base, np.memmap) and second.tokens.dtype == np.uint8  # read from the file
    assert {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.npy") if p.name in built} == built
    assert list(second.splits()[0]) == list(first.splits()[0])
    path.write_text("ab\ncd\nef\n")  # another file: another store
    assert len(ItemStore.open(path)) == 3


def test_bad_inputs_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DatasetError, match="no items"):
        ItemStore.open(empty)
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"ab\n" + bytes(range(128, 256)))
    with pytest.raises(DatasetError, match="not UTF-8"):
        ItemStore.open(binary)
    with pytest.raises(DatasetError, match="does not exist"):
        ItemStore.open(tmp_path / "missing.txt")
