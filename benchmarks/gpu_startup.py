"""Where a CUDA training run's first seconds go: importing torch, CUDA init, the first torch.optim optimizer,
the first convolution, and cuDNN planning for new input lengths (packed training makes one most steps).

    python benchmarks/gpu_startup.py      (on a machine with a GPU)
"""
import time

t0 = time.perf_counter()
import torch  # noqa: E402  (timed)

if not torch.cuda.is_available():
    raise SystemExit("error: this measures CUDA start-up and needs a CUDA GPU")
t1 = time.perf_counter(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t2 = time.perf_counter(); opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2, device="cuda"))], fused=True)
t3 = time.perf_counter(); y = torch.nn.functional.conv1d(torch.randn(1, 8, 100, device="cuda"), torch.randn(8, 8, 2, device="cuda")); torch.cuda.synchronize()
t4 = time.perf_counter()
for n in range(1000, 1100):  # a new length each call, as packed training makes
    y = torch.nn.functional.conv1d(torch.randn(1, 128, n, device="cuda"), torch.randn(128, 128, 2, device="cuda"), dilation=2)
torch.cuda.synchronize(); t5 = time.perf_counter()
for n in range(1000, 1100):
    y = torch.nn.functional.conv1d(torch.randn(1, 128, n, device="cuda"), torch.randn(128, 128, 2, device="cuda"), dilation=2)
torch.cuda.synchronize(); t6 = time.perf_counter()
print(f"import torch {t1-t0:.2f} s, CUDA init {t2-t1:.2f} s, AdamW {t3-t2:.2f} s, first conv1d {t4-t3:.2f} s, "
      f"100 new lengths {t5-t4:.3f} s, the same 100 again {t6-t5:.3f} s")
