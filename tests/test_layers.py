"""The lecture's layers and TreeWaveNet: the lecture's arithmetic, its initial weights, its first loss."""
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.layers import BatchNorm1d, Embedding, FlattenConsecutive, Linear, Sequential, Tanh
from wavenet_conv.models.tree import TreeWaveNet

# ---- TreeWaveNet: the lecture's model, weights and first loss ----

def test_lecture_parameter_count_and_first_loss(lecture_windows):
    """The lecture: torch.manual_seed(42), the model, then the first batch of its training loop: loss 3.3167."""
    Xtr, Ytr = lecture_windows[0]
    torch.manual_seed(42)
    model = TreeWaveNet(ModelConfig())
    assert sum(p.numel() for p in model.parameters()) == 76579
    ix = torch.randint(0, Xtr.shape[0], (32,))
    logits, loss = model(Xtr[ix], Ytr[ix])
    assert logits.shape == (32, 27)
    assert_close(loss, torch.tensor(3.3167), atol=5e-5, rtol=0)


def test_tree_draws_its_weights_in_the_lectures_order():
    torch.manual_seed(7)
    tree = TreeWaveNet(ModelConfig())
    torch.manual_seed(7)
    expected = [torch.randn(27, 24)]
    for fan_in in (48, 256, 256):
        expected.append(torch.randn(fan_in, 128) / fan_in**0.5)
    expected.append(torch.randn(128, 27) / 128**0.5 * 0.1)  # the lecture's less confident last layer
    got = [tree.embedding.weight] + [linear.weight for linear, _ in tree.levels] + [tree.head.weight]
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g.detach(), e)
    assert torch.equal(tree.head.bias.detach(), torch.zeros(27))


@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_tree_is_the_lectures_sequential(block_size):
    config = ModelConfig(vocab_size=11, block_size=block_size, n_embd=3, n_hidden=5)
    tree = TreeWaveNet(config)
    kinds = [type(layer) for layer in tree.layers]
    assert kinds == [Embedding] + [FlattenConsecutive, Linear, BatchNorm1d, Tanh] * config.n_levels + [Linear]
    assert len(tree.levels) == config.n_levels and all(linear.bias is None for linear, _ in tree.levels)
    idx = torch.randint(0, 11, (6, block_size), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 11, (6,), generator=torch.Generator().manual_seed(1))
    logits, loss = tree(idx, targets)
    assert logits.shape == (6, 11)
    assert_close(loss, F.cross_entropy(logits, targets))
    assert tree(idx)[1] is None


# ---- the layers, one by one ----

@pytest.mark.parametrize("n, t", [(2, 8), (4, 8), (2, 2), (4, 4)])
def test_flatten_consecutive_concatenates_earlier_first(n, t):
    x = torch.randn(3, t, 5, generator=torch.Generator().manual_seed(0))
    out = FlattenConsecutive(n)(x)
    manual = torch.stack([torch.cat([x[:, j * n + i] for i in range(n)], dim=-1) for j in range(t // n)], dim=1)
    if t == n:
        manual = manual[:, 0]  # the lecture squeezes a single remaining time step
    assert out.shape == manual.shape
    assert torch.equal(out, manual)


def lecture_batchnorm(x, gamma, beta, running_mean, running_var, eps, momentum, training):
    """The lecture's BatchNorm1d.__call__, written out: returns (out, new running_mean, new running_var)."""
    if training:
        dim = 0 if x.ndim == 2 else (0, 1)
        xmean = x.mean(dim, keepdim=True)
        xvar = x.var(dim, keepdim=True)  # unbiased
        running_mean = (1 - momentum) * running_mean + momentum * xmean.squeeze()
        running_var = (1 - momentum) * running_var + momentum * xvar.squeeze()
    else:
        xmean, xvar = running_mean, running_var
    xhat = (x - xmean) / torch.sqrt(xvar + eps)
    return gamma * xhat + beta, running_mean, running_var


@pytest.mark.parametrize("shape", [(10, 4), (6, 5, 4)], ids=["2d", "3d"])
def test_batchnorm_matches_the_lectures_formulas(shape):
    g = torch.Generator().manual_seed(0)
    bn = BatchNorm1d(4, eps=1e-3, momentum=0.2).double()
    with torch.no_grad():
        bn.gamma.copy_(torch.rand(4, generator=g) + 0.5)
        bn.beta.copy_(torch.randn(4, generator=g))
        bn.running_mean.copy_(torch.randn(4, generator=g))
        bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
    state = [t.detach().clone() for t in (bn.gamma, bn.beta, bn.running_mean, bn.running_var)]
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64) + 1

    out = bn(x)  # training mode: batch statistics, running statistics updated
    expected, mean, var = lecture_batchnorm(x, *state, eps=1e-3, momentum=0.2, training=True)
    assert_close(out, expected, atol=1e-12, rtol=0)
    assert_close(bn.running_mean, mean, atol=1e-12, rtol=0)
    assert_close(bn.running_var, var, atol=1e-12, rtol=0)
    # unbiased: the biased variance would give another running_var
    biased = (1 - 0.2) * state[3] + 0.2 * x.var(tuple(range(x.ndim - 1)), unbiased=False)
    assert (bn.running_var - biased).abs().max() > 1e-3

    bn.eval()
    out = bn(x)  # eval mode: running statistics, which stay as they are
    expected, _, _ = lecture_batchnorm(x, state[0], state[1], mean, var, eps=1e-3, momentum=0.2, training=False)
    assert_close(out, expected, atol=1e-12, rtol=0)
    assert_close(bn.running_mean, mean, atol=0, rtol=0)


def test_linear_is_x_at_weight_plus_bias_with_the_lectures_init():
    torch.manual_seed(3)
    layer = Linear(6, 4)
    torch.manual_seed(3)
    assert torch.equal(layer.weight.detach(), torch.randn(6, 4) / 6**0.5)
    assert layer.weight.shape == (6, 4) and torch.equal(layer.bias.detach(), torch.zeros(4))
    with torch.no_grad():
        layer.bias.copy_(torch.arange(4.0))
    x = torch.randn(2, 3, 6)
    assert_close(layer(x), x @ layer.weight + layer.bias)
    no_bias = Linear(6, 4, bias=False)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    assert_close(no_bias(x), x @ no_bias.weight)


def test_embedding_and_tanh():
    emb = Embedding(5, 3)
    idx = torch.tensor([[0, 4, 4], [2, 1, 0]])
    assert torch.equal(emb(idx), emb.weight[idx]) and emb(idx).shape == (2, 3, 3)
    x = torch.randn(7)
    assert torch.equal(Tanh()(x), torch.tanh(x))


def every_layer():
    return Sequential([Embedding(7, 4), FlattenConsecutive(2), Linear(8, 5, bias=False), BatchNorm1d(5), Tanh(),
                       FlattenConsecutive(2), Linear(10, 7)])


def test_layers_live_in_the_state_dict():
    model = every_layer()
    assert set(model.state_dict()) == {
        "layers.0.weight", "layers.2.weight", "layers.3.gamma", "layers.3.beta",
        "layers.3.running_mean", "layers.3.running_var", "layers.6.weight", "layers.6.bias",
    }
    assert {name for name, _ in model.named_buffers()} == {"layers.3.running_mean", "layers.3.running_var"}
    idx = torch.randint(0, 7, (3, 4), generator=torch.Generator().manual_seed(0))
    model(idx)  # a training step moves the running statistics
    copy = every_layer()
    copy.load_state_dict(model.state_dict())
    model.eval(), copy.eval()
    assert torch.equal(model(idx), copy(idx))


def test_layers_move_with_to(torch_device):
    model = every_layer().to(device=torch_device, dtype=torch.float64)
    for tensor in list(model.parameters()) + list(model.buffers()):
        assert tensor.dtype == torch.float64 and tensor.device.type == torch_device.type
    idx = torch.randint(0, 7, (3, 4), device=torch_device)
    out = model(idx)
    assert out.dtype == torch.float64 and out.device.type == torch_device.type and out.shape == (3, 7)
