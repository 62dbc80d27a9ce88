"""`--compile` and `--precision`: torch.compile and bfloat16 autocast, as training, evaluation and the benchmark use them.

Compiling. A conv batch's packed row has a new length n every batch, and so do the row's index tensors (item
starts, the positions each dilation reads across). `compile_model` compiles with dynamic shapes (every size a
symbol from the start), so one graph serves every length; the layout's Python numbers (n, the longest item)
become symbols too, and only the branches taken on them are guarded. What would still fix a size in the graph
is kept out of it: the compiled conv runs each level's taps as matmuls (packing.gathered_taps_conv), as
inductor's convolution backward fixes the row length, and batch norm as plain sums (conv.ConvLevel), as the
fused kernel's eps depends on n. `compilations()` counts the graphs compiled so far.

Precision. fp32 (the default) is float32 throughout; on CUDA with TF32 off (utils/device.py): what the
equivalence tests check. bf16 runs the forward under `torch.autocast(device, torch.bfloat16)`: matmuls and
convolutions in bfloat16 (on a CPU fast only with AVX512-BF16 or AMX), the weights, gradients, optimizer,
batch-norm statistics and losses in float32.
"""
import contextlib

import torch

PRECISIONS = ("fp32", "bf16")
PRECISION_HELP = ("fp32: float32 throughout, TF32 off on CUDA (what the equivalence tests check); bf16: the forward "
                  "under bfloat16 autocast, its matmuls and convolutions in bfloat16 (on a CPU fast only with "
                  "AVX512-BF16 or AMX, on CUDA from Ampere on), weights, optimizer, batch-norm statistics and losses "
                  "in float32")
COMPILE_HELP = ("run the model through torch.compile (inductor; on a CPU it needs a C++ compiler): one graph with "
                "dynamic shapes serves every batch length; the first steps and the first evaluation wait for it "
                "(tens of seconds on a small CPU)")


def autocast(device, precision):
    """The context the forward runs in: nothing for fp32, bfloat16 autocast on `device`'s type for bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def compile_model(model):
    """`model` (a module or function) compiled with dynamic shapes; call it as the model itself."""
    import torch._dynamo  # noqa: F401  (imported here: an eager run never pays its second of import time)

    warm_einops()
    return torch.compile(model, dynamic=True)


def warm_einops():
    """Fill einops' backend cache for tensors and parameters before tracing: dynamo guards on that cache's size,
    and an eager call on a new type (a Parameter, in from_tree or the folded form) would recompile the model."""
    from einops import rearrange

    for tensor in (torch.zeros(1, 1), torch.nn.Parameter(torch.zeros(1, 1))):
        rearrange(tensor, "a b -> b a")


def compilations():
    """Graphs compiled in this process so far (each recompilation counts one)."""
    import torch._dynamo.utils

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]
