"""The tanh the levels use is torch.tanh, forward and backward, to rounding, whichever form this CPU runs faster."""
import pytest
import torch
from torch.testing import assert_close

from wavenet_conv.models import activations
from wavenet_conv.models.activations import SigmoidTanh, tanh, tanh_


@pytest.fixture(params=[True, False], ids=["sigmoid-form", "torch-tanh"])
def either_form(request, monkeypatch):
    """Both of the forms the measured choice can pick, whichever this machine picks."""
    monkeypatch.setattr(activations, "sigmoid_form_is_faster", lambda: request.param)
    return request.param


def test_the_choice_is_a_measured_bool():
    assert activations.sigmoid_form_is_faster() in (True, False)


def test_sigmoid_tanh_equals_tanh_and_its_gradient(torch_device, either_form):
    g = torch.Generator().manual_seed(0)
    x = (4 * torch.randn(3, 5, 7, generator=g, dtype=torch.float64)).to(torch_device).requires_grad_()
    grad = torch.randn(3, 5, 7, generator=g, dtype=torch.float64).to(torch_device)
    for f in (SigmoidTanh.apply, tanh):
        (dx,) = torch.autograd.grad(f(x), x, grad)
        (expected_dx,) = torch.autograd.grad(torch.tanh(x), x, grad)
        assert_close(f(x), torch.tanh(x), atol=1e-15, rtol=1e-12)
        assert_close(dx, expected_dx, atol=1e-15, rtol=1e-12)
    assert torch.autograd.gradcheck(SigmoidTanh.apply, (x[:1, :2, :3].detach().clone().requires_grad_(),))
    assert_close(tanh_(x.detach().clone()), torch.tanh(x.detach()), atol=1e-15, rtol=1e-12)


def test_sigmoid_tanh_saturates_without_nan():
    x = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], requires_grad=True)
    y = SigmoidTanh.apply(x)
    assert_close(y, torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
