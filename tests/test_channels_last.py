"""ChannelsLastConv1d: an nn.Conv1d that convolves channels-last (b, c, t) views of rows as they lie."""
import pytest
import torch
from einops import rearrange
from torch import nn
from torch.testing import assert_close

from wavenet_conv.models.channels_last import ChannelsLastConv1d, as_rows, as_time, is_channels_last


def conv_pair(dilation, bias, seed=0, device="cpu"):
    """A ChannelsLastConv1d and a plain nn.Conv1d with the same weights (float64)."""
    torch.manual_seed(seed)
    ours = ChannelsLastConv1d(5, 3, kernel_size=2, dilation=dilation, bias=bias).to(device, torch.float64)
    plain = nn.Conv1d(5, 3, kernel_size=2, dilation=dilation, bias=bias).to(device, torch.float64)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


@pytest.mark.parametrize("dilation", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_input_gives_the_plain_conv1d_result_and_gradients(torch_device, dilation, bias, batch):
    ours, plain = conv_pair(dilation, bias, device=torch_device)
    g = torch.Generator().manual_seed(dilation)
    rows = torch.randn(batch, 9, 5, dtype=torch.float64, generator=g).to(torch_device).requires_grad_()  # b t c
    x = rearrange(rows, "b t c -> b c t")  # a channels-last view
    assert is_channels_last(x) and not x.is_contiguous()
    out = ours(x)
    expected = plain(x.contiguous())
    assert_close(out, expected)
    assert is_channels_last(out)  # the NHWC path ran: its output lies as rows too
    upstream = torch.randn(expected.shape, dtype=torch.float64, generator=g).to(torch_device)
    grads = torch.autograd.grad(out, [rows, ours.weight], upstream)
    expected_grads = torch.autograd.grad(expected, [rows, plain.weight], upstream)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want)


def test_rows_as_one_item_take_the_channels_last_path():
    """as_time's view of rows (a size-1 batch, whose batch stride is arbitrary) convolves as rows."""
    ours, plain = conv_pair(dilation=2, bias=True)
    rows = torch.randn(11, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # n c
    out = ours(as_time(rows))
    assert is_channels_last(out)
    assert_close(as_rows(out), rearrange(plain(rows.T[None].contiguous()), "1 h n -> n h"))


def test_contiguous_input_runs_the_plain_conv1d():
    """Negative control for the stride check: (b, c, t) contiguous input is not channels-last, runs the plain
    Conv1d, and its output is contiguous (b, h, t)."""
    ours, plain = conv_pair(dilation=1, bias=True)
    x = torch.randn(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert not is_channels_last(x)
    out = ours(x)
    assert out.is_contiguous() and not is_channels_last(out)
    assert_close(out, plain(x))


def test_hooks_and_state_dict_are_the_conv1d_ones():
    ours, plain = conv_pair(dilation=1, bias=False)
    assert isinstance(ours, nn.Conv1d)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    calls = []
    ours.register_forward_hook(lambda module, inputs, out: calls.append(tuple(inputs[0].shape)))
    ours(as_time(torch.zeros(4, 5, dtype=torch.float64)))
    assert calls == [(1, 5, 4)]
