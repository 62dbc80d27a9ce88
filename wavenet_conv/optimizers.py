"""The two optimizers the recipes use, light enough to start instantly.

torch.optim's optimizers import torch._dynamo the first time one is built: about 2 s of start-up on a
2-core CPU, 10% of the fast recipe's time to its target. These classes keep the interface a training loop
uses (param_groups with an "lr" to set, zero_grad, step, state_dict, load_state_dict) and nothing else.
"""
import math

import torch


class Optimizer:
    def __init__(self, params, defaults):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in groups]
        self.state = {}  # parameter -> its state tensors and counters

    def parameters(self):
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            p.grad = None

    def state_dict(self):
        """torch.optim's layout: state keyed by the parameter's index, groups listing their indices."""
        index = {p: i for i, p in enumerate(self.parameters())}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[p] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": {index[p]: dict(s) for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict):
        params = self.parameters()
        if [len(g["params"]) for g in state_dict["param_groups"]] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the optimizer state does not fit these parameters")
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {
            params[int(i)]: {k: v.to(params[int(i)].device) if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in state_dict["state"].items()
        }


class LectureSGD(Optimizer):
    """The lecture's update, literally: `p.data += -lr * p.grad` (no momentum, no weight decay)."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data += -group["lr"] * p.grad


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov and Hutter), the update of torch.optim.AdamW."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(
                    p, {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
                state["step"] += 1
                if decay:
                    p.mul_(1 - lr * decay)
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                # bias corrections: the averages start at zero
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** state["step"])).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** state["step"]))
