"""Shared fixtures: the names.txt dataset, devices (CUDA skipped cleanly without a GPU), random-weight models.

Random models get random weights *and* random batch-norm gamma, beta and running statistics, so that an
equivalence check cannot pass because some part of the model is still at its identity initialisation.
"""
import os
from pathlib import Path

import pytest
import torch

from wavenet_conv.data.words import Vocab, build_windows, read_words, split_words
from wavenet_conv.models.tree import TreeWaveNet
from wavenet_conv.utils.device import cuda_works, use_exact_float32_convolutions

REPO = Path(__file__).resolve().parents[1]
NAMES_CANDIDATES = (REPO / "data" / "names.txt", REPO.parent / "shared" / "data" / "names.txt")
HAS_CUDA = cuda_works()

# `@requires_cuda` on a test, or the `cuda` mark alone (see pytest_collection_modifyitems): skipped without a GPU
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a working CUDA GPU")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, requires_cuda])]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a working CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def item_store_cache(tmp_path_factory):
    """The token stores of the tests' input files go to a temporary cache, not the user's (subprocesses too)."""
    previous = os.environ.get("WAVENET_CONV_CACHE")
    os.environ["WAVENET_CONV_CACHE"] = str(tmp_path_factory.mktemp("item_store_cache"))
    yield
    if previous is None:
        del os.environ["WAVENET_CONV_CACHE"]
    else:
        os.environ["WAVENET_CONV_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread():
    """Tests use tiny shapes: one intra-op thread is as fast as two, and on shared cores tens of times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def exact_float32_on_cuda():
    """The CUDA settings every entry point gets from resolve_device (a test builds its models directly)."""
    if HAS_CUDA:
        use_exact_float32_convolutions()


@pytest.fixture(params=DEVICES)
def torch_device(request):
    """Every test that takes this runs on the CPU, and on CUDA when a GPU is present."""
    return torch.device(request.param)


def find_names_file(candidates=NAMES_CANDIDATES):
    """The first candidate that is a file; a test failure (not a skip) saying how to get names.txt otherwise."""
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail(
        "names.txt not found at " + " or ".join(str(p) for p in candidates)
        + "; it ships in the repository (`git checkout -- data/names.txt`), or `python -m wavenet_conv.data --download`",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def names_path():
    """The canonical names.txt: <repo>/data/names.txt, else <repo>/../shared/data/names.txt; a failure otherwise."""
    return find_names_file()


@pytest.fixture
def names_file_finder():
    return find_names_file


@pytest.fixture(scope="session")
def words(names_path):
    return read_words(names_path)


@pytest.fixture(scope="session")
def vocab(words):
    return Vocab.from_words(words)


@pytest.fixture(scope="session")
def lecture_split(words):
    """The lecture's train / val / test words."""
    return split_words(words)


@pytest.fixture(scope="session")
def lecture_windows(lecture_split, vocab):
    """The lecture's (Xtr, Ytr), (Xdev, Ydev), (Xte, Yte) for block_size 8."""
    return [build_windows(part, vocab, 8) for part in lecture_split]


def randomize_(tree, generator):
    """Random weights and random batch-norm state in place: nothing left at an identity initialisation."""
    with torch.no_grad():
        tree.embedding.weight.copy_(torch.randn(tree.embedding.weight.shape, generator=generator))
        for linear, bn in tree.levels:
            fan_in = linear.weight.shape[0]
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) / fan_in**0.5)
            bn.gamma.copy_(0.5 + torch.rand(bn.gamma.shape, generator=generator))
            bn.beta.copy_(0.5 * torch.randn(bn.beta.shape, generator=generator))
            bn.running_mean.copy_(0.5 * torch.randn(bn.running_mean.shape, generator=generator))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=generator))
        fan_in = tree.head.weight.shape[0]
        tree.head.weight.copy_(torch.randn(tree.head.weight.shape, generator=generator) / fan_in**0.5)
        tree.head.bias.copy_(0.1 * torch.randn(tree.head.bias.shape, generator=generator))
    return tree


def random_tree(config, seed=0, dtype=torch.float64, device="cpu"):
    """A TreeWaveNet with random weights and batch-norm state drawn from torch.Generator(seed), in eval mode.

    The global RNG is left untouched, so tests that seed it (the lecture's loss) do not depend on test order.
    """
    with torch.random.fork_rng(devices=[]):
        tree = TreeWaveNet(config)
    randomize_(tree, torch.Generator().manual_seed(seed))
    return tree.to(device=device, dtype=dtype).eval()


@pytest.fixture
def make_random_tree():
    """random_tree(config, seed=0, dtype=torch.float64, device='cpu') as a fixture, for tests in any file."""
    return random_tree


@pytest.fixture
def small_words_file(tmp_path):
    """120 pseudo-names (test_train.syllable_words): 96 to train on, 12 to validate, 12 to test."""
    from test_train import syllable_words

    path = tmp_path / "words.txt"
    path.write_text("\n".join(syllable_words(120)) + "\n")
    return path
