"""PyTorch eager doing the work of benches/rl_kernels.rs, for scripts/gpu-check.sh's RL table.

The GRPO loss is MMR1's (verl compute_policy_loss vanilla + low_var_kl, EasyR1 masked_mean) plus
an entropy bonus, written as verl writes it, with its backward (autograd w.r.t. logp and
entropy); group advantages as verl's compute_grpo_outcome_advantage (vectorised per group of 8).
Prints one JSON object {id: median seconds}. Usage: python3 rl_kernels_torch.py OUT.json
"""
import json
import sys

import torch


def bench(f, iters=20):
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        f()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) * 1e-3)
    return sorted(ts)[len(ts) // 2]


def main():
    dev = "cuda"
    rows, ln = 2048, 2048
    g = torch.Generator(device=dev).manual_seed(0)
    lp = torch.empty(rows, ln, device=dev).uniform_(-5, -0.01, generator=g)
    old = lp - torch.empty_like(lp).uniform_(-0.3, 0.3, generator=g)
    ref = lp - torch.empty_like(lp).uniform_(-0.5, 0.5, generator=g)
    ent = torch.empty_like(lp).uniform_(0.1, 4.0, generator=g)
    mask = torch.ones_like(lp)
    mask[:, ln - 100:] = 0
    adv = torch.empty(rows, 1, device=dev).uniform_(-2, 2, generator=g).expand(rows, ln)
    eps, beta, ent_coef = 0.2, 0.01, 0.001

    def loss_and_grad():
        x = lp.detach().requires_grad_(True)
        h = ent.detach().requires_grad_(True)
        ratio = torch.exp(x - old)
        pg1 = -adv * ratio
        pg2 = -adv * torch.clamp(ratio, 1 - eps, 1 + eps)
        pg = torch.maximum(pg1, pg2)
        kl = ref - x
        kl = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
        tok = pg + beta * kl - ent_coef * h
        loss = (tok * mask).sum() / (mask.sum() + 1e-8)
        # the metrics verl logs
        _ = ((pg2 > pg1).float() * mask).sum() / mask.sum(), ((old - x) * mask).sum() / mask.sum()
        loss.backward()
        return x.grad, h.grad

    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    res["grpo_loss_4M_vanilla_k3_entropy"] = bench(loss_and_grad)

    for groups, name in [(8192, "group_adv_64k_grpo"), (131072, "group_adv_1M_grpo")]:
        k = 8
        rw = torch.randint(0, 2, (groups * k,), device=dev, generator=g).float()

        def advantages():
            s = rw.view(groups, k)
            return ((s - s.mean(-1, keepdim=True)) / (s.std(-1, keepdim=True) + 1e-6)).view(-1)

        res[name] = bench(advantages)
    json.dump(res, open(sys.argv[1], "w"), indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
