"""The light optimizers: torch.optim.AdamW's update and the lecture's SGD, with state that survives a checkpoint."""
import copy

import pytest
import torch

from wavenet_conv.optimizers import AdamW, LectureSGD


def model_and_batches(seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
    batches = [(torch.randn(8, 5, generator=generator, dtype=torch.float64),
                torch.randint(0, 3, (8,), generator=generator)) for _ in range(6)]
    return model, batches


def groups(model, decay):
    matrices = [p for p in model.parameters() if p.ndim == 2]
    vectors = [p for p in model.parameters() if p.ndim == 1]
    return [{"params": matrices, "weight_decay": decay}, {"params": vectors, "weight_decay": 0.0}]


def train(model, optimizer, batches, lrs):
    for (x, y), lr in zip(batches, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


LRS = [0.01, 0.03, 0.02, 0.02, 0.005, 0.001]


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_adamw_matches_torch(decay):
    ours, batches = model_and_batches()
    theirs = copy.deepcopy(ours)
    train(ours, AdamW(groups(ours, decay), lr=0.01, betas=(0.9, 0.95)), batches, LRS)
    train(theirs, torch.optim.AdamW(groups(theirs, decay), lr=0.01, betas=(0.9, 0.95)), batches, LRS)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)


def test_lecture_sgd_is_the_lecture_update():
    model, batches = model_and_batches()
    expected = copy.deepcopy(model)
    train(model, LectureSGD(model.parameters(), lr=0.1), batches[:1], [0.1])
    x, y = batches[0]
    torch.nn.functional.cross_entropy(expected(x), y).backward()
    with torch.no_grad():
        for p in expected.parameters():
            p.data += -0.1 * p.grad
    for a, b in zip(model.parameters(), expected.parameters()):
        assert torch.equal(a, b)


def test_state_dict_resumes_exactly():
    whole, batches = model_and_batches()
    parts = copy.deepcopy(whole)
    train(whole, AdamW(groups(whole, 0.5), lr=0.01), batches, LRS)

    first = AdamW(groups(parts, 0.5), lr=0.01)
    train(parts, first, batches[:3], LRS[:3])
    saved = copy.deepcopy(first.state_dict())
    second = AdamW(groups(parts, 0.5), lr=0.01)
    second.load_state_dict(saved)
    train(parts, second, batches[3:], LRS[3:])
    for a, b in zip(whole.parameters(), parts.parameters()):
        assert torch.equal(a, b)
