#!/usr/bin/env python3
"""Write tests/fixtures/parity/*.json from the upstream code itself.

Every number in the fixtures comes from calling the reference implementations, in float64,
with torch autograd for the gradients d loss / d logp:

  verl 0.9.1 (PyPI)     verl/trainer/ppo/core_algos.py: get_policy_loss_fn (vanilla, gspo, gpg,
                        clip_cov, kl_cov, geo_mean, cispo, sapo), agg_loss, kl_penalty, and the
                        advantage estimators grpo, rloo, reinforce_plus_plus_baseline, gpg.
                        The loss is combined as verl/workers/utils/losses.py::ppo_loss does:
                        pg_loss - entropy_coeff * agg_loss(entropy) + kl_loss_coef * agg_loss(kl).
  TRL 1.16.0 (PyPI)     trl/trainer/grpo_trainer.py::GRPOTrainer._compute_loss, called unbound on
                        a stand-in `self` (no model: `_get_per_token_logps_and_entropies` returns
                        the test's log-probs); loss types grpo, bnpo, dr_grpo, dapo, cispo, sapo,
                        importance_sampling_level token/sequence, beta, delta,
                        use_bias_correction_kl, top_entropy_quantile.
                        TRL's advantages are computed inline in `_generate_and_score_completions`,
                        which needs a model and reward functions; the fixture replays those lines
                        (cited below) with TRL's own `nanstd`.
  MMR1 d8161a0 (GitHub) LengSicong/MMR1 verl/trainer/core_algos.py: compute_policy_loss,
                        kl_penalty, compute_grpo_outcome_advantage, with its
                        verl/utils/torch_functional.py (masked_mean). The loss is combined as its
                        verl/workers/actor/dp_actor.py does: pg_loss + kl_coef * masked_mean(kld).
  nltk 3.9.1 (PyPI)     nltk.translate.bleu_score.sentence_bleu with SmoothingFunction().method2:
                        self-BLEU (each rollout against all the others), its mean over rollouts.

Setup (a fresh virtual environment; nothing here is committed except the fixtures):

    python3 -m venv /tmp/parity-venv
    /tmp/parity-venv/bin/pip install -r scripts/requirements-parity.txt
    /tmp/parity-venv/bin/pip install --no-deps verl==0.9.1
    /tmp/parity-venv/bin/python scripts/make_parity_fixtures.py [--mmr1-dir DIR]

verl is installed without its dependencies (ray, tensordict, ...): the modules core_algos never
calls are replaced by inert stand-ins at import. MMR1's two files are downloaded from
raw.githubusercontent.com at the pinned commit unless --mmr1-dir points at a checkout.
"""

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import os
import subprocess
import sys
import types
import urllib.request
from collections import defaultdict
from unittest import mock

PINS = {"torch": None, "trl": "1.16.0", "verl": "0.9.1", "nltk": "3.9.1"}
MMR1_REPO = "LengSicong/MMR1"
MMR1_COMMIT = "d8161a0c0bb2933cae38b782aa75181663328de5"
MMR1_FILES = ["verl/trainer/core_algos.py", "verl/utils/torch_functional.py"]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parity")


# ------------------------------------------------------------------------------------------------
# Upstream modules
# ------------------------------------------------------------------------------------------------


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Inert stand-ins for verl's heavy imports that core_algos never calls."""

    NAMES = {"ray", "tensordict", "codetiming", "orjson"}

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.NAMES:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        m = mock.MagicMock(name=spec.name)
        m.__path__ = []
        m.__spec__ = spec
        return m

    def exec_module(self, module):
        pass


def check_versions():
    from importlib.metadata import version

    for pkg, want in PINS.items():
        got = version(pkg)
        if want is not None and got != want:
            sys.exit(f"{pkg} {got} is installed; the fixtures pin {want}")
    return {pkg: version(pkg) for pkg in PINS}


def load_verl():
    sys.meta_path.insert(0, _Stubs())
    import verl.trainer.ppo.core_algos as ca
    from verl.workers.config import ActorConfig

    return ca, ActorConfig


def load_mmr1(mmr1_dir):
    """MMR1's core_algos as package `mmr1_upstream` (its relative import needs the package)."""
    root = os.path.join("/tmp", f"mmr1_upstream_{MMR1_COMMIT[:7]}")
    pkg = os.path.join(root, "mmr1_upstream")
    for rel in MMR1_FILES:
        dst = os.path.join(pkg, rel.split("/", 1)[1])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if mmr1_dir:
            if os.path.isdir(os.path.join(mmr1_dir, "objects")) or mmr1_dir.endswith(".git"):
                text = subprocess.check_output(
                    ["git", "--git-dir", mmr1_dir, "show", f"{MMR1_COMMIT}:{rel}"]
                ).decode()
            else:
                text = open(os.path.join(mmr1_dir, rel)).read()
        else:
            url = f"https://raw.githubusercontent.com/{MMR1_REPO}/{MMR1_COMMIT}/{rel}"
            text = urllib.request.urlopen(url, timeout=60).read().decode()
        open(dst, "w").write(text)
    for d in [pkg, os.path.join(pkg, "trainer"), os.path.join(pkg, "utils")]:
        open(os.path.join(d, "__init__.py"), "a").close()
    sys.path.insert(0, root)
    import mmr1_upstream.trainer.core_algos as mca

    return mca


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def make_batch(torch, gen, rows, width, spread, fully_masked=(), adversarial=False, lengths=None):
    """Right-padded [rows, width] batch; one advantage per row, both signs and 0."""
    t = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)
    old = -0.05 - 6.0 * t(rows, width)
    if adversarial:
        sign = torch.where(t(rows, width) < 0.5, -1.0, 1.0)
        lr = sign * (20.0 + 10.0 * t(rows, width))
        lr = torch.where(t(rows, width) < 0.3, (t(rows, width) - 0.5) * 0.8, lr)
        rx = torch.where(t(rows, width) < 0.5, -1.0, 1.0) * (15.0 + 15.0 * t(rows, width))
    else:
        lr = (t(rows, width) - 0.5) * 2.0 * spread
        rx = (t(rows, width) - 0.5) * 4.0 * spread
    logp = old + lr
    ref = logp + rx
    adv_row = []
    for r in range(rows):
        k = r % 4
        a = 0.0 if k == 0 else (0.2 + 1.8 * float(t(1))) * (1.0 if k == 1 else -1.0)
        adv_row.append(a)
    adv = torch.tensor(adv_row, dtype=torch.float64).unsqueeze(1).expand(rows, width).clone()
    if lengths is None:
        lengths = [max(1, int(width * float(t(1))) + 1) for _ in range(rows)]
        lengths = [min(width, x) for x in lengths]
    mask = torch.zeros(rows, width, dtype=torch.float64)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1.0
    for r in fully_masked:
        mask[r] = 0.0
    ent = 3.0 * t(rows, width)
    return {"logp": logp, "old": old, "adv": adv, "mask": mask, "ref": ref, "ent": ent}


def batches(torch):
    gen = torch.Generator().manual_seed(20261126)
    out = {
        "rows1": make_batch(torch, gen, 1, 5, 0.5),
        "rows2_masked": make_batch(torch, gen, 2, 4, 0.5, fully_masked=[1]),
        "rows3": make_batch(torch, gen, 3, 7, 0.6),
        "rows8_ragged": make_batch(torch, gen, 8, 9, 0.6, fully_masked=[5]),
        "rows16": make_batch(torch, gen, 16, 6, 0.4),
        "adversarial": make_batch(torch, gen, 6, 5, 0.0, fully_masked=[4], adversarial=True),
    }
    one = lambda v: torch.tensor(v, dtype=torch.float64)
    # The examples of issue 13.
    out["issue_sum_norm"] = {
        "logp": one([[-1.0], [-2.0]]),
        "old": one([[-1.0], [-2.0]]),
        "adv": one([[-1.0], [-1.0]]),
        "mask": one([[1.0], [1.0]]),
        "ref": one([[-1.0], [-2.0]]),
        "ent": one([[1.0], [1.0]]),
    }
    out["issue_log_ratio_25"] = {
        "logp": one([[-1.0]]),
        "old": one([[-26.0]]),
        "adv": one([[-1.0]]),
        "mask": one([[1.0]]),
        "ref": one([[-1.5]]),
        "ent": one([[1.0]]),
    }
    out["issue_masked_row"] = {
        "logp": one([[-1.0], [-1.0]]),
        "old": one([[-1.0], [-1.0]]),
        "adv": one([[1.0], [1.0]]),
        "mask": one([[1.0], [0.0]]),
        "ref": one([[-1.2], [-1.0]]),
        "ent": one([[1.0], [1.0]]),
    }
    return out


def flat(x):
    return [float(v) for v in x.reshape(-1).tolist()]


def batch_json(b):
    rows, width = b["logp"].shape
    d = {"rows": rows, "width": width}
    for k in ["logp", "old", "adv", "mask", "ref", "ent"]:
        d[k] = flat(b[k])
    return d


# ------------------------------------------------------------------------------------------------
# verl
# ------------------------------------------------------------------------------------------------

VERL_POLICIES = ["vanilla", "gspo", "gpg", "clip_cov", "kl_cov", "geo_mean", "cispo", "sapo"]
AGGS = [
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
]
VERL_KLS = ["k1", "abs", "k2", "k3", "k1+", "abs+", "k3+", "low_var_kl", "mse", "kl"]


def verl_case(torch, ca, ActorConfig, b, policy, agg, kl, kl_coef, ent_coef, eps_high):
    from verl.workers.config.actor import PolicyLossConfig

    # Selection of all Clip-Cov candidates (so torch.randperm does not matter) and 20% of the
    # tokens for KL-Cov.
    plc = PolicyLossConfig(loss_mode=policy, clip_cov_ratio=1.0, kl_cov_ratio=0.2)
    cfg = ActorConfig(
        policy_loss=plc,
        strategy="fsdp",
        clip_ratio=0.2,
        clip_ratio_low=0.2,
        clip_ratio_high=eps_high,
        clip_ratio_c=3.0,
        ppo_micro_batch_size_per_gpu=1,
        ppo_mini_batch_size=2,
        rollout_n=2,
        tau_pos=1.0,
        tau_neg=1.05,
        loss_agg_mode=agg,
    )
    logp = b["logp"].clone().requires_grad_(True)
    mask = b["mask"]
    fn = ca.get_policy_loss_fn(policy)
    pg_loss, pg_metrics = fn(
        old_log_prob=b["old"],
        log_prob=logp,
        advantages=b["adv"],
        response_mask=mask.bool(),
        loss_agg_mode=agg,
        config=cfg,
        rollout_is_weights=None,
    )
    # verl/workers/utils/losses.py::ppo_loss
    loss = pg_loss
    ent_loss = ca.agg_loss(loss_mat=b["ent"], loss_mask=mask.bool(), loss_agg_mode=agg)
    loss = loss - ent_coef * ent_loss
    kld = ca.kl_penalty(logprob=logp, ref_logprob=b["ref"], kl_penalty=kl)
    kl_loss = ca.agg_loss(loss_mat=kld, loss_mask=mask.bool(), loss_agg_mode=agg)
    loss = loss + kl_loss * kl_coef
    (grad,) = torch.autograd.grad(loss, logp, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(logp)
    metrics = {k.split("/")[-1]: float(v) for k, v in pg_metrics.items()}
    metrics["pg_loss"] = float(pg_loss.detach())
    metrics["kl_mean"] = float(((kld * mask).sum() / (mask.sum() + 1e-8)).detach())
    return {
        "policy": policy,
        "agg": agg,
        "kl": kl,
        "kl_coef": kl_coef,
        "entropy_coef": ent_coef,
        "clip_eps_high": eps_high,
        "clip_cov_ratio": 1.0,
        "kl_cov_ratio": 0.2,
        "ppo_kl_coef": float(cfg.policy_loss.ppo_kl_coef),
        "loss": float(loss.detach()),
        "grad": flat(grad),
        "metrics": metrics,
    }


def verl_cases(torch, ca, ActorConfig, bs):
    names = [n for n in bs if not n.startswith("issue")]
    cases = []
    i = 0
    for bi, name in enumerate(names):
        for pi, policy in enumerate(VERL_POLICIES):
            i += 1
            agg = AGGS[(bi + pi) % len(AGGS)]
            kl = VERL_KLS[(3 * bi + pi) % len(VERL_KLS)]
            b = bs[name]
            active_adv = b["adv"][b["mask"] > 0]
            if policy == "kl_cov" and len(set(active_adv.tolist())) < 2:
                # One advantage: every covariance is 0 up to rounding, and torch.topk breaks
                # the tie arbitrarily. Use a batch with several advantages instead.
                name = "rows8_ragged"
                b = bs[name]
            c = verl_case(
                torch,
                ca,
                ActorConfig,
                b,
                policy,
                agg,
                kl,
                kl_coef=0.05 if i % 6 else 0.0,
                ent_coef=0.01 if i % 5 == 0 else 0.0,
                eps_high=0.28 if i % 2 else 0.2,
            )
            c["batch"] = name
            cases.append(c)
    # Every aggregation with the vanilla loss on the ragged batch.
    for agg in AGGS:
        c = verl_case(torch, ca, ActorConfig, bs["rows8_ragged"], "vanilla", agg, "k3", 0.05, 0.0, 0.2)
        c["batch"] = "rows8_ragged"
        cases.append(c)
    c = verl_case(
        torch, ca, ActorConfig, bs["issue_sum_norm"], "vanilla", "seq-mean-token-sum-norm", "k1", 0.0, 0.0, 0.2
    )
    c["batch"] = "issue_sum_norm"
    cases.append(c)
    return cases


def verl_advantages(torch, ca, gen):
    """grpo (scaled and not), rloo, reinforce_plus_plus_baseline, gpg on groups of 1, 2, 3, 8, 16
    and ragged, with ragged response lengths (the reward sits on the last valid token)."""
    out = []
    layouts = {
        "groups1": [1] * 5,
        "groups2": [2] * 4,
        "groups3": [3] * 3,
        "groups8": [8] * 2,
        "groups16": [16],
        "ragged": [1, 4, 2, 7, 3],
    }
    t = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)
    for lname, sizes in layouts.items():
        n = sum(sizes)
        width = 6
        index = []
        for g, s in enumerate(sizes):
            index += [f"uid{g}"] * s
        rewards = torch.where(t(n) < 0.5, 1.0, 0.0) + torch.where(t(n) < 0.3, 0.5 * t(n), 0.0)
        if lname == "groups3":
            rewards[:3] = 1.0  # a zero-variance group
        lengths = [1 + int(width * float(t(1))) for _ in range(n)]
        lengths = [min(width, x) for x in lengths]
        mask = torch.zeros(n, width, dtype=torch.float64)
        tlr = torch.zeros(n, width, dtype=torch.float64)
        for r, ln in enumerate(lengths):
            mask[r, :ln] = 1.0
            tlr[r, ln - 1] = rewards[r]
        import numpy as np

        idx = np.array(index, dtype=object)
        for est, kw in [
            ("grpo", {"norm_adv_by_std_in_grpo": True}),
            ("grpo", {"norm_adv_by_std_in_grpo": False}),
            ("rloo", {}),
            ("reinforce_plus_plus_baseline", {}),
            ("gpg", {}),
        ]:
            fn = ca.get_adv_estimator_fn(est)
            adv, _ = fn(token_level_rewards=tlr.clone(), response_mask=mask, index=idx, config=None, **kw)
            out.append(
                {
                    "layout": lname,
                    "group_sizes": sizes,
                    "estimator": est,
                    "norm_by_std": kw.get("norm_adv_by_std_in_grpo", True),
                    "rewards": flat(rewards),
                    "lengths": lengths,
                    "advantages": [float(adv[r, 0]) for r in range(n)],
                }
            )
    return out


# ------------------------------------------------------------------------------------------------
# TRL
# ------------------------------------------------------------------------------------------------


class _Accel:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x

    def gather_for_metrics(self, x):
        return x


def trl_case(torch, GRPOTrainer, b, loss_type, level, beta, delta, bias_kl, quantile, eps_high):
    rows, width = b["logp"].shape
    logp = b["logp"].clone().requires_grad_(True)
    metrics = defaultdict(lambda: defaultdict(list))
    args = types.SimpleNamespace(
        delta=delta,
        use_bias_correction_kl=bias_kl,
        sapo_temperature_pos=1.0,
        sapo_temperature_neg=1.05,
        steps_per_generation=1,
    )
    me = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, b["ent"], None),
        top_entropy_quantile=quantile,
        aux_loss_enabled=False,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=args,
        loss_type=loss_type,
        epsilon_low=0.2,
        epsilon_high=eps_high,
        use_vllm=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=_Accel(),
        _entropy_bonus_enabled=False,
        _metrics=metrics,
        max_completion_length=width,
    )
    me.get_high_entropy_mask = lambda e, m, thr: GRPOTrainer.get_high_entropy_mask(me, e, m, thr)
    inputs = {
        "prompt_ids": torch.zeros(rows, 1, dtype=torch.long),
        "prompt_mask": torch.ones(rows, 1, dtype=torch.long),
        "completion_ids": torch.zeros(rows, width, dtype=torch.long),
        "completion_mask": b["mask"],
        "advantages": b["adv"][:, 0].clone(),
        "old_per_token_logps": b["old"],
        "ref_per_token_logps": b["ref"],
        "num_items_in_batch": b["mask"].sum(),
    }
    loss = GRPOTrainer._compute_loss(me, None, inputs)
    (grad,) = torch.autograd.grad(loss, logp)
    m = {k.replace("/", "_"): float(v[-1]) for k, v in metrics["train"].items()}
    return {
        "loss_type": loss_type,
        "level": level,
        "beta": beta,
        "delta": delta,
        "use_bias_correction_kl": bias_kl,
        "top_entropy_quantile": quantile,
        "clip_eps_high": eps_high,
        "loss": float(loss.detach()),
        "grad": flat(grad),
        "metrics": m,
    }


def trl_cases(torch, GRPOTrainer, bs):
    cases = []
    names = [n for n in bs if not n.startswith("issue")]
    combos = []
    for lt in ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"]:
        for level in ["token", "sequence"]:
            if level == "sequence" and lt in ["cispo", "sapo"]:
                continue
            combos.append((lt, level))
    i = 0
    for bi, name in enumerate(names):
        for ci, (lt, level) in enumerate(combos):
            i += 1
            beta = 0.04 if i % 3 else 0.0
            delta = 1.5 if (lt not in ["cispo", "sapo"] and i % 4 == 1) else None
            bias_kl = bool(i % 2) and beta > 0
            quantile = 0.6 if i % 5 == 2 else 1.0
            eps_high = 5.0 if lt == "cispo" and i % 2 else 0.28
            c = trl_case(torch, GRPOTrainer, bs[name], lt, level, beta, delta, bias_kl, quantile, eps_high)
            c["batch"] = name
            cases.append(c)
    for lt in ["grpo", "dr_grpo"]:
        c = trl_case(torch, GRPOTrainer, bs["issue_masked_row"], lt, "token", 0.0, None, False, 1.0, 0.2)
        c["batch"] = "issue_masked_row"
        cases.append(c)
    return cases


def trl_advantages(torch, nanstd, gen):
    """TRL 1.16 `_generate_and_score_completions`, multi_objective_aggregation
    "sum_then_normalize" with one reward function (grpo_trainer.py lines 2762-2788), replayed
    with TRL's own `nanstd`."""
    t = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)
    out = []
    for g in [2, 3, 8, 16]:
        n = 4 * g if g < 8 else 2 * g
        rewards = torch.where(t(n) < 0.5, 1.0, 0.0) + torch.where(t(n) < 0.3, 0.5 * t(n), 0.0)
        rewards[:g] = 1.0
        for scale in ["group", "batch", "none"]:
            mean_g = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
            if scale in ["group", "none"]:
                std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
            else:
                std = nanstd(rewards).expand_as(rewards)
            adv = rewards - mean_g
            if scale != "none":
                adv = adv / (std + 1e-4)
            out.append({"group_size": g, "scale_rewards": scale, "rewards": flat(rewards), "advantages": flat(adv)})
    return out


# ------------------------------------------------------------------------------------------------
# MMR1
# ------------------------------------------------------------------------------------------------


def mmr1_case(torch, mca, b, kl, kl_coef):
    logp = b["logp"].clone().requires_grad_(True)
    mask = b["mask"]
    pg_loss, pg_clipfrac, ppo_kl = mca.compute_policy_loss(
        old_log_probs=b["old"], log_probs=logp, advantages=b["adv"], eos_mask=mask, clip_low=0.2, clip_high=0.2
    )
    loss = pg_loss
    kl_mean = 0.0
    if kl is not None:
        # dp_actor.update_policy: kl_loss = masked_mean(kld, response_mask); loss += kl_loss * kl_coef
        kld = mca.kl_penalty(logp, b["ref"], kl_penalty=kl)
        kl_loss = (kld * mask).sum() / (mask.sum() + 1e-8)
        loss = loss + kl_loss * kl_coef
        kl_mean = float(kl_loss)
    (grad,) = torch.autograd.grad(loss, logp)
    return {
        "kl": kl,
        "kl_coef": kl_coef,
        "loss": float(loss.detach()),
        "grad": flat(grad),
        "metrics": {"pg_loss": float(pg_loss), "pg_clipfrac": float(pg_clipfrac), "ppo_kl": float(ppo_kl), "kl_mean": kl_mean},
    }


def mmr1_cases(torch, mca, bs):
    cases = []
    kls = ["low_var_kl", "kl", "abs", "mse", None]
    for i, name in enumerate(bs):
        if name in ("issue_sum_norm", "issue_masked_row"):
            continue
        c = mmr1_case(torch, mca, bs[name], kls[i % len(kls)], 0.01)
        c["batch"] = name
        cases.append(c)
    return cases


def mmr1_advantages(torch, mca, gen):
    t = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)
    out = []
    for sizes in [[1, 1], [2, 2], [3, 3], [8], [16], [1, 4, 2, 7]]:
        n = sum(sizes)
        index = []
        for g, s in enumerate(sizes):
            index += [g] * s
        rewards = torch.where(t(n) < 0.5, 1.0, 0.0) + torch.where(t(n) < 0.3, 0.1, 0.0)
        mask = torch.ones(n, 3, dtype=torch.float64)
        tlr = torch.zeros(n, 3, dtype=torch.float64)
        tlr[:, 2] = rewards
        adv, _ = mca.compute_grpo_outcome_advantage(tlr, mask, index)
        out.append({"group_sizes": sizes, "rewards": flat(rewards), "advantages": [float(adv[r, 0]) for r in range(n)]})
    return out


# ------------------------------------------------------------------------------------------------
# self-BLEU
# ------------------------------------------------------------------------------------------------


def self_bleu_cases(gen_seed=7):
    import random

    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rnd = random.Random(gen_seed)
    sets = [
        [[1, 2], [1, 2], [1, 3]],  # issue 13: shorter than n
        [[1, 2, 3, 4], [1, 2, 3, 5]],
        [[1, 2], [1, 2, 3, 4]],
        [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [5, 6, 7, 8, 9]],
        [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]],
        [[1], [1], [2]],
        [[], [1, 2]],
    ]
    for _ in range(40):
        k = rnd.randint(2, 6)
        vocab = rnd.randint(1, 6)
        sets.append([[rnd.randrange(vocab) for _ in range(rnd.randint(0, 25))] for _ in range(k)])
    sm = SmoothingFunction().method2
    out = []
    for rolls in sets:
        for max_n in [4, 2]:
            w = tuple([1.0 / max_n] * max_n)
            scores = []
            for i, hyp in enumerate(rolls):
                refs = [r for j, r in enumerate(rolls) if j != i]
                scores.append(float(sentence_bleu(refs, hyp, weights=w, smoothing_function=sm)))
            out.append({"rollouts": rolls, "max_n": max_n, "self_bleu": sum(scores) / len(scores)})
    return out


# ------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mmr1-dir", help="MMR1 checkout or bare git dir (default: download the two files)")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    versions = check_versions()
    import torch

    torch.set_default_dtype(torch.float64)
    ca, ActorConfig = load_verl()
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import nanstd

    mca = load_mmr1(a.mmr1_dir)
    bs = batches(torch)
    os.makedirs(a.out, exist_ok=True)
    prov = {
        "versions": versions,
        "mmr1": f"{MMR1_REPO}@{MMR1_COMMIT}",
        "script": "scripts/make_parity_fixtures.py",
    }
    gen = torch.Generator().manual_seed(99)
    files = {
        "batches.json": {k: batch_json(v) for k, v in bs.items()},
        "verl.json": {"cases": verl_cases(torch, ca, ActorConfig, bs), "advantages": verl_advantages(torch, ca, gen)},
        "trl.json": {"cases": trl_cases(torch, GRPOTrainer, bs), "advantages": trl_advantages(torch, nanstd, gen)},
        "mmr1.json": {"cases": mmr1_cases(torch, mca, bs), "advantages": mmr1_advantages(torch, mca, gen)},
        "self_bleu.json": {"cases": self_bleu_cases()},
    }
    for name, body in files.items():
        body = {"provenance": prov, **body}
        path = os.path.join(a.out, name)
        with open(path, "w") as f:
            json.dump(body, f, separators=(",", ":"), allow_nan=False)
            f.write("\n")
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
