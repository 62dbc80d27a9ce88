"""Data: the lecture's vocabulary, split and windows on names.txt, whole-item batches, bad input, the download helper."""
import os
import string
import subprocess
import sys

import pytest
import torch

from wavenet_conv.data.__main__ import main
from wavenet_conv.data.download import NAMES_SHA256, sha256_of
from wavenet_conv.data.words import (IGNORE_INDEX, Vocab, bucketed_batches, build_windows, count_predictions,
                                     encode_items, pad_items, read_words, split_words)
from wavenet_conv.utils.errors import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- names.txt: the lecture's numbers ----

def test_missing_names_file_fails_the_tests_with_a_how_to(tmp_path, names_file_finder):
    with pytest.raises(pytest.fail.Exception, match="python -m wavenet_conv.data --download"):
        names_file_finder((tmp_path / "data" / "names.txt", tmp_path / "shared" / "names.txt"))
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "names.txt").write_text("anna\n")
    assert names_file_finder((tmp_path / "data" / "names.txt", tmp_path / "shared" / "names.txt")).parent.name == "shared"


def test_names_file_is_the_canonical_one(names_path, words):
    assert sha256_of(names_path) == NAMES_SHA256
    assert len(words) == 32033


def test_vocab_on_names_is_dot_then_a_to_z(vocab):
    assert vocab.itos == (".",) + tuple(string.ascii_lowercase)
    assert len(vocab) == 27
    assert vocab.encode("a") == [1] and vocab.encode("z") == [26]
    assert vocab.encode("emma") == [5, 13, 13, 1]
    assert vocab.decode([0, 5, 13, 13, 1, 0]) == ".emma."


def test_lecture_split_window_counts(lecture_split, lecture_windows, words):
    assert [len(part) for part in lecture_split] == [25626, 3203, 3204]
    assert sorted(sum(lecture_split, [])) == sorted(words)
    assert [x.shape[0] for x, _ in lecture_windows] == [182625, 22655, 22866]
    for x, y in lecture_windows:
        assert x.shape[1] == 8 and x.dtype == y.dtype == torch.long and y.shape == x.shape[:1]


def test_split_is_deterministic_and_leaves_the_input_alone(words):
    original = list(words)
    assert split_words(words) == split_words(words)
    assert words == original


def test_build_windows_is_the_lectures_build_dataset(vocab):
    x, y = build_windows(["emma"], vocab, 3)
    # the lecture's printout of ... ---> e, ..e ---> m, .em ---> m, emm ---> a, mma ---> .
    assert x.tolist() == [[0, 0, 0], [0, 0, 5], [0, 5, 13], [5, 13, 13], [13, 13, 1]]
    assert y.tolist() == [5, 13, 13, 1, 0]


# ---- whole items for the conv ----

def test_pad_items_layout():
    x, y = pad_items([[3, 1, 2], [], [5]])
    P = IGNORE_INDEX
    assert x.tolist() == [[0, 3, 1, 2], [0, 0, 0, 0], [0, 5, 0, 0]]
    assert y.tolist() == [[3, 1, 2, 0], [0, P, P, P], [5, 0, P, P]]
    assert x.dtype == y.dtype == torch.long
    chosen_x, chosen_y = pad_items([[3, 1, 2], [], [5]], [2, 0])  # the chosen items, in that order
    assert chosen_x.tolist() == [[0, 5, 0, 0], [0, 3, 1, 2]] and chosen_y.tolist() == [y.tolist()[2], y.tolist()[0]]


def test_pad_items_positions_are_the_tree_windows(vocab):
    """Valid position (b, t) of the padded batch is window number k of build_windows: same target, same last token."""
    names = ["", "a", "emma", "christopher", "bo"]
    x, y = pad_items(encode_items(names, vocab))
    windows, targets = build_windows(names, vocab, 4)
    valid = y != IGNORE_INDEX
    assert torch.equal(y[valid], targets)
    assert torch.equal(x[valid], windows[:, -1])
    assert int(valid.sum()) == count_predictions(encode_items(names, vocab)) == len(targets)


def padding_fraction(items, batches):
    padded = sum(len(batch) * (max(len(items[i]) for i in batch) + 1) for batch in batches)
    return 1 - count_predictions(items) / padded


def test_bucketed_batches_cover_every_item_once():
    items = [[1] * (i % 13) for i in range(1000)]
    batches = bucketed_batches(items, 32, torch.Generator().manual_seed(0), pool_batches=4)
    assert sorted(i for batch in batches for i in batch) == list(range(len(items)))
    assert all(1 <= len(batch) <= 32 for batch in batches)
    again = bucketed_batches(items, 32, torch.Generator().manual_seed(0), pool_batches=4)
    other = bucketed_batches(items, 32, torch.Generator().manual_seed(1), pool_batches=4)
    assert again == batches and other != batches


def test_bucketed_batches_waste_little_padding_on_names(lecture_split, vocab):
    items = encode_items(lecture_split[0], vocab)
    batches = bucketed_batches(items, 32, torch.Generator().manual_seed(0))
    assert sorted(i for batch in batches for i in batch) == list(range(len(items)))
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    unbucketed = [order[i : i + 32] for i in range(0, len(order), 32)]
    waste, baseline = padding_fraction(items, batches), padding_fraction(items, unbucketed)
    # measured: about 1.4% bucketed against about 33% for plain random batches of 32
    assert waste < 0.05
    assert waste < baseline / 5


# ---- any one-item-per-line file ----

OTHER_ITEMS = ["O'Brien", "  Ann Marie ", "St. John", "Zoë", "Ωmega", "x"]


def test_works_on_a_non_names_file(tmp_path, capsys):
    path = tmp_path / "items.txt"
    path.write_text("\n".join(OTHER_ITEMS) + "\n\n", encoding="utf-8")
    words = read_words(path)
    assert words == [w.strip() for w in OTHER_ITEMS]
    vocab = Vocab.from_words(words)
    assert vocab.itos[0] == "." and list(vocab.itos[1:]) == sorted(set("".join(words)))
    for w in words:
        assert vocab.decode(vocab.encode(w)) == w
    # a '.' inside an item is a character of its own, never the boundary token 0
    assert 0 not in vocab.encode("St. John") and vocab.encode(".") != [0]
    x, y = build_windows(words, vocab, 4)
    assert len(y) == sum(len(w) + 1 for w in words)
    xs, ys = pad_items(encode_items(words, vocab))
    assert torch.equal(ys[ys != IGNORE_INDEX], y)
    main(["--input-file", str(path)])
    assert f"{len(words)} items, vocabulary of {len(vocab)}" in capsys.readouterr().out


def test_unknown_character_is_a_dataset_error(vocab):
    with pytest.raises(DatasetError, match="not in the vocabulary"):
        vocab.encode("émile")


# ---- bad input: one exception type, one line, exit status 2 from the CLI ----

def bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b"\n   \n\t\n\r\n")
    (tmp_path / "latin1.txt").write_bytes("anna\nzoë\n".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    return {
        "missing": (tmp_path / "missing.txt", "does not exist"),
        "missing names.txt": (tmp_path / "nowhere" / "names.txt", "--download"),
        "directory": (tmp_path / "folder", "is a directory"),
        "empty": (tmp_path / "empty.txt", "has no items"),
        "blank lines only": (tmp_path / "blank.txt", "has no items"),
        "not UTF-8": (tmp_path / "latin1.txt", "not UTF-8"),
    }


BAD_INPUT_KINDS = ["missing", "missing names.txt", "directory", "empty", "blank lines only", "not UTF-8"]


@pytest.mark.parametrize("kind", BAD_INPUT_KINDS)
def test_bad_input_raises_one_line_dataset_error(tmp_path, kind):
    path, reason = bad_inputs(tmp_path)[kind]
    with pytest.raises(DatasetError) as error:
        read_words(path)
    message = str(error.value)
    assert reason in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize("kind", BAD_INPUT_KINDS)
def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys, kind):
    path, reason = bad_inputs(tmp_path)[kind]
    with pytest.raises(SystemExit) as exit_info:
        main(["--input-file", str(path)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and reason in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_missing_default_input_says_it_ships_with_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(DatasetError) as error:
        read_words()
    assert "ships in the repository" in str(error.value) and "--download" not in str(error.value)


def test_cli_subprocess_bad_input_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-m", "wavenet_conv.data", "--input-file", str(tmp_path / "names.txt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--download" in result.stderr and result.stdout == ""


# ---- the download helper, against local file:// URLs ----

def test_download_writes_the_file_and_verifies_the_checksum(tmp_path, names_path, capsys):
    source = tmp_path / "mirror" / "names.txt"
    source.parent.mkdir()
    source.write_bytes(names_path.read_bytes())
    output = tmp_path / "data" / "names.txt"
    main(["--download", "--url", source.as_uri(), "--output", str(output)])
    assert output.read_bytes() == names_path.read_bytes()
    assert NAMES_SHA256 in capsys.readouterr().out
    assert os.listdir(output.parent) == ["names.txt"]  # no temporary file left behind


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over-existing"])
def test_download_with_checksum_mismatch_exits_2_and_writes_nothing(tmp_path, names_path, capsys, existing):
    corrupted = tmp_path / "mirror" / "names.txt"
    corrupted.parent.mkdir()
    data = bytearray(names_path.read_bytes())
    data[100] ^= 1  # one flipped bit
    corrupted.write_bytes(bytes(data))
    output = tmp_path / "data" / "names.txt"
    if existing:
        output.parent.mkdir()
        output.write_text("kept\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--download", "--url", corrupted.as_uri(), "--output", str(output)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checksum mismatch") and err.count("\n") == 1
    if existing:
        assert output.read_text() == "kept\n"  # a failed download never replaces a good file
        assert os.listdir(output.parent) == ["names.txt"]
    else:
        assert not output.exists() and os.listdir(output.parent) == []


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_download_to_an_unusable_output_exits_2(tmp_path, names_path, capsys, where):
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("a file, not a folder\n")
    output = tmp_path / "folder" if where == "a directory" else tmp_path / "plain" / "names.txt"
    with pytest.raises(SystemExit) as exit_info:
        main(["--download", "--url", names_path.as_uri(), "--output", str(output)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["folder", "plain"] and os.listdir(tmp_path / "folder") == []


def test_download_from_a_missing_url_exits_2(tmp_path, capsys):
    output = tmp_path / "data" / "names.txt"
    with pytest.raises(SystemExit) as exit_info:
        main(["--download", "--url", (tmp_path / "absent.txt").as_uri(), "--output", str(output)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download") and err.count("\n") == 1
    assert not output.exists()
