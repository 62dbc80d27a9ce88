"""The recipes' torch.optim optimizers and LambdaLR schedules: the right construction, and exact resume of their state."""
import copy
import io

import pytest
import torch

from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.training.optimization import learning_rate_multiplier, make_optimizer, make_scheduler
from wavenet_conv.training.recipes import get_recipe


def model_and_batches(seed=0, n_batches=6):
    """A tiny conv with seeded weights, and seeded (x, y) batches of whole 5-token items."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        model = ConvWaveNet(ModelConfig(vocab_size=7, block_size=4, n_embd=3, n_hidden=5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    batches = [(torch.randint(0, 7, (4, 5), generator=generator), torch.randint(0, 7, (4, 5), generator=generator))
               for _ in range(n_batches)]
    for x, _ in batches:
        x[:, 0] = 0  # items start with '.'
    return model, batches


def train(model, optimizer, scheduler, batches):
    for x, y in batches:
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_adamw_decays_the_matrices_only():
    model, _ = model_and_batches()
    optimizer = make_optimizer(get_recipe("fast"), model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    names = {p: name for name, p in model.named_parameters()}
    assert decayed["weight_decay"] == get_recipe("fast").weight_decay > 0 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 and "embedding" not in names[p] for p in decayed["params"])
    assert {names[p] for p in plain["params"]} >= {"embedding.weight", "head.bias"}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert optimizer.defaults["fused"]  # torch's fused kernel, on the CPU too


@pytest.mark.cuda
def test_adamw_is_fused_on_cuda():
    model, _ = model_and_batches()
    optimizer = make_optimizer(get_recipe("fast"), model.cuda())
    assert optimizer.defaults["fused"]


def test_lecture_sgd_is_the_lecture_update():
    """torch.optim.SGD(lr=0.1) does `p.data += -lr * p.grad`, as one fused multiply-add: equal up to float32 rounding."""
    model, batches = model_and_batches()
    lecture = copy.deepcopy(model)
    optimizer = make_optimizer(get_recipe("lecture"), model)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0
    train(model, optimizer, make_scheduler(optimizer, get_recipe("lecture"), 100), batches[:1])
    x, y = batches[0]
    lecture(x, y)[1].backward()
    moved = False
    with torch.no_grad():
        for p, q in zip(model.parameters(), lecture.parameters()):
            before = q.detach().clone()
            q.data += -0.1 * q.grad
            torch.testing.assert_close(p, q, rtol=1.2e-7, atol=1e-7)  # within an ulp or so of the lecture's update
            moved |= not torch.equal(before, q)
    assert moved


@pytest.mark.parametrize("recipe", ["fast", "lecture"])
def test_schedule_rates(recipe):
    """The optimizer's lr at each step is the recipe's learning rate times its multiplier for that step."""
    recipe = get_recipe(recipe)
    model, batches = model_and_batches(n_batches=10)
    optimizer = make_optimizer(recipe, model)
    scheduler = make_scheduler(optimizer, recipe, max_steps=10)
    for step, (x, y) in enumerate(batches):
        expected = recipe.learning_rate * learning_rate_multiplier(step, recipe, 10)
        assert all(group["lr"] == pytest.approx(expected, rel=1e-12) for group in optimizer.param_groups)
        train(model, optimizer, scheduler, [(x, y)])


def test_cosine_warms_up_then_decays_to_the_floor():
    recipe = get_recipe("fast", schedule="cosine", warmup_fraction=0.1)
    rates = [learning_rate_multiplier(i, recipe, 100) for i in range(100)]
    assert rates[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert all(a > b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(0.0, abs=1e-3)


def test_linear_warms_up_then_decays_in_a_straight_line():
    recipe = get_recipe("fast", schedule="linear", warmup_fraction=0.1, final_lr_fraction=0.2)
    rates = [learning_rate_multiplier(i, recipe, 100) for i in range(100)]
    assert rates[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert rates[10:] == pytest.approx([0.2 + 0.8 * (1 - i / 90) for i in range(90)])
    cosine = [learning_rate_multiplier(i, get_recipe("fast", schedule="cosine", warmup_fraction=0.1,
                                                       final_lr_fraction=0.2), 100) for i in range(100)]
    assert rates[40] < cosine[40] and rates[90] > cosine[90]  # not the cosine


def roundtrip(state):
    """Through torch.save and torch.load(weights_only=True), as a checkpoint goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("recipe", ["fast", "lecture"])
def test_optimizer_and_scheduler_state_resume_exactly(recipe):
    """Three steps, a checkpoint, fresh objects that load it, three more steps: the same as six steps in one go."""
    recipe = get_recipe(recipe)
    whole, batches = model_and_batches()
    parts = copy.deepcopy(whole)
    optimizer = make_optimizer(recipe, whole)
    train(whole, optimizer, make_scheduler(optimizer, recipe, max_steps=6), batches)

    first = make_optimizer(recipe, parts)
    first_scheduler = make_scheduler(first, recipe, max_steps=6)
    train(parts, first, first_scheduler, batches[:3])
    saved = roundtrip({"model": parts.state_dict(), "optimizer": first.state_dict(),
                       "scheduler": first_scheduler.state_dict()})
    resumed, _ = model_and_batches(seed=1)  # other weights, overwritten by the checkpoint's
    resumed.load_state_dict(saved["model"])
    second = make_optimizer(recipe, resumed)
    second_scheduler = make_scheduler(second, recipe, max_steps=6)
    second.load_state_dict(saved["optimizer"])
    second_scheduler.load_state_dict(saved["scheduler"])
    assert second.param_groups[0]["lr"] == first.param_groups[0]["lr"]
    train(resumed, second, second_scheduler, batches[3:])
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert second_scheduler.last_epoch == 6
