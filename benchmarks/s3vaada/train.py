"""One S3VAADA unit: a trainer, a selection strategy and a seed -> accuracy after every labelling round.

The selection strategies, VAT, the VAADA objective and the adversarial losses come from
:mod:`smoothopt.adapt`; this module wires data, models, rounds and the label oracle together.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from benchmarks._dist import gather_objects, rank_and_world, unwrap, wrap_ddp
from benchmarks._harness import RunContext
from benchmarks._io import save_torch
from benchmarks.sdat.common import accuracy, inverse_decay, predict, rank_generator, seed_everything
from benchmarks.sdat.data import AdaptationData, forever, in_order, labels_of, make_task
from benchmarks.sdat.train import build_classifier, sgd_options

logger = logging.getLogger(__name__)


class _Learner:
    """Classifier, DANN adversary, optimizers and schedules of one active-learning run."""

    def __init__(self, config: dict[str, Any], data: AdaptationData, seed: int, device: torch.device) -> None:
        from smoothopt.adapt import DANNLoss, DomainDiscriminator, GradientReversal

        total = int(config["init_iterations"]) + int(config["rounds"]) * int(config["round_iterations"])
        seed_everything(seed)
        self.model = build_classifier(config, data.num_classes).to(device)
        hidden = (config["discriminator_hidden"],) * 2
        grl = GradientReversal(config["grl_schedule"], max_steps=total)
        self.adv = DANNLoss(DomainDiscriminator(self.model.features_dim, hidden), grl).to(device)
        sgd = sgd_options(config)
        groups = self.model.param_groups(config["lr"], config["model"]["backbone_lr_mult"])
        self.opt = torch.optim.SGD(groups, **sgd)
        self.dopt = torch.optim.SGD(self.adv.discriminator.parameters(), **sgd)
        grl.attach(self.dopt)
        decay = inverse_decay(config["lr_gamma"], config["lr_decay"])
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (self.opt, self.dopt)]
        self.ddp_model = wrap_ddp(self.model, device)
        self.adv.discriminator = wrap_ddp(self.adv.discriminator, device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "adv": unwrap(self.adv.discriminator).state_dict(),
            "grl": self.adv.grl.state_dict(),
            "opt": self.opt.state_dict(),
            "dopt": self.dopt.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        unwrap(self.adv.discriminator).load_state_dict(state["adv"])
        self.adv.grl.load_state_dict(state["grl"])
        self.opt.load_state_dict(state["opt"])
        self.dopt.load_state_dict(state["dopt"])
        for s, sd in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(sd)


def train_phase(
    learner: _Learner,
    config: dict[str, Any],
    trainer: str,
    data: AdaptationData,
    labelled: torch.Tensor,
    iterations: int,
    seed: int,
    salt: int,
    device: torch.device,
) -> dict[str, float]:
    """Train for ``iterations`` steps on source + labelled target + unlabelled target batches.

    ``trainer == "vaada"``: :func:`smoothopt.adapt.vaada_loss` on the labelled stream (source and
    labelled target) and the unlabelled target, with the DANN loss as its adversarial term.
    ``trainer == "dann"``: cross-entropy on the labelled stream plus ``dann_trade_off`` * DANN loss.

    Returns:
        The last step's losses.
    """
    from smoothopt.adapt import VAADAWeights, vaada_loss

    bs = int(config["batch_size"])
    src = forever(data.source, bs, rank_generator(seed, 10 * salt + 1), workers=config["workers"])
    tgt = forever(data.target, bs, rank_generator(seed, 10 * salt + 2), workers=config["workers"])
    lab = None
    if labelled.numel() > 0:
        lab = forever(Subset(data.target, labelled.tolist()), bs, rank_generator(seed, 10 * salt + 3),
                      workers=config["workers"])
    gen_vat = rank_generator(seed, 10 * salt + 4)
    w = config["weights"]
    weights = VAADAWeights(vat_labelled=w["vat_labelled"], vat_target=w["vat_unlabelled"],
                           entropy_target=w["entropy"], adversarial=w["adversarial"])
    net = learner.ddp_model
    # NOTE: VAT's extra forward passes go through the unwrapped module; their gradients reach the
    # same parameters, which DDP all-reduces once per backward.
    logits_fn = unwrap(net)
    last: dict[str, float] = {}
    for _ in range(iterations):
        x_s, y_s = next(src)
        x_t, _ = next(tgt)
        xs = [x_s, x_t]
        ys = [y_s]
        if lab is not None:
            x_l, y_l = next(lab)
            xs.insert(1, x_l)
            ys.append(y_l)
        x = torch.cat(xs).to(device)
        y = torch.cat(ys).to(device)
        n_lab, n_s = y.shape[0], y_s.shape[0]
        learner.opt.zero_grad(set_to_none=True)
        learner.dopt.zero_grad(set_to_none=True)
        logits, features = net(x)
        z_lab, z_t = logits[:n_lab], logits[n_lab:]
        adv = learner.adv(features[:n_s], features[n_lab:])
        if trainer == "vaada":
            losses = vaada_loss(lambda inp: logits_fn(inp).logits, x[:n_lab], y, x[n_lab:],
                                logits_labelled=z_lab, logits_target=z_t, adversarial_loss=adv, weights=weights,
                                xi=config["vat"]["xi"], eps=config["vat"]["eps"],
                                power_iterations=config["vat"]["power_iterations"], generator=gen_vat)
            loss = losses.total
        else:
            loss = F.cross_entropy(z_lab, y) + config["dann_trade_off"] * adv
        loss.backward()
        learner.opt.step()
        learner.dopt.step()
        for s in learner.schedulers:
            s.step()
        last = {"loss": loss.item(), "adv_loss": adv.item()}
    return last


def choose(
    strategy: str,
    model: nn.Module,
    data: AdaptationData,
    unlabelled: torch.Tensor,
    budget: int,
    config: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Pool indices (into ``data.target``) of the ``budget`` unlabelled examples ``strategy`` picks."""
    from smoothopt.adapt import select, vat_sensitivity

    probs = predict(model, Subset(data.target_eval, unlabelled.tolist()), device).double()
    probs = probs / probs.sum(dim=1, keepdim=True)
    s3 = config["s3"]
    weights = (s3["alpha"], s3["beta"], s3["gamma"])
    if strategy == "s3":
        was_training = model.training
        model.eval()
        # Streamed in batches of 256 so that a large image pool never sits in memory at once.
        u = torch.cat([
            vat_sensitivity(lambda inp: model(inp).logits, x.to(device), xi=config["vat"]["xi"],
                            eps=config["vat"]["eps"], restarts=s3["restarts"],
                            power_iterations=config["vat"]["power_iterations"], batch_size=256, generator=generator)
            for x, _ in in_order(Subset(data.target_eval, unlabelled.tolist()), 256)
        ])
        model.train(was_training)
        sel = select("s3", probs, budget, uncertainty=u.cpu(), weights=weights)
    elif strategy == "s3_margin":
        sel = select("s3", probs, budget, uncertainty="margin", weights=weights)
    else:
        sel = select(strategy, probs, budget, generator=generator)  # type: ignore[arg-type]
    return unlabelled[sel.indices]


def _initial_state(
    config: dict[str, Any], trainer: str, seed: int, data: AdaptationData, ctx: RunContext, device: torch.device
) -> dict[str, Any]:
    """The unsupervised adaptation every strategy of ``(trainer, seed)`` starts from, cached on disk."""
    path = ctx.path("cache", f"init_{trainer}_seed{seed}.pt")
    exists = gather_objects(path.exists())[0]  # rank 0 decides, so every rank takes the same branch
    if exists:
        return torch.load(path, map_location=device, weights_only=False)
    learner = _Learner(config, data, seed, device)
    losses = train_phase(learner, config, trainer, data, torch.empty(0, dtype=torch.long),
                         int(config["init_iterations"]), seed, 0, device)
    state = {**learner.state_dict(), "losses": losses}
    if ctx.is_main:
        save_torch(path, state)
    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()
    return state


def run_active(config: dict[str, Any], trainer: str, strategy: str, seed: int, ctx: RunContext) -> dict[str, Any]:
    """Adapt, then ``rounds`` times select, label and train further; accuracy after each round.

    Returns:
        ``budgets`` (labels used after each round, 0 first), ``test_acc`` (held-out target
        accuracy at each budget), ``label_counts`` (labelled examples per class at the end),
        ``final_acc``.
    """
    device = torch.device(ctx.device)
    data = make_task(config["data"], seed)
    pool_size = len(data.target)  # type: ignore[arg-type]
    budget = config["budget_per_round"]
    if budget is None:
        budget = max(1, round(float(config["budget_fraction"]) * pool_size))
    budget = int(budget)
    if budget * int(config["rounds"]) > pool_size:
        raise ValueError(f"{config['rounds']} rounds of {budget} labels exceed the target pool of {pool_size}")

    learner = _Learner(config, data, seed, device)
    learner.load_state_dict(_initial_state(config, trainer, seed, data, ctx, device))
    labelled = torch.empty(0, dtype=torch.long)
    budgets, accs = [0], [accuracy(learner.model, data.test, device)]
    for r in range(1, int(config["rounds"]) + 1):
        mask = torch.ones(pool_size, dtype=torch.bool)
        mask[labelled] = False
        unlabelled = mask.nonzero().flatten()
        # Randomness of selection and training depends on (seed, round) only, so strategies
        # differ only by what they pick.
        # The selection's generator is the same on every rank, so every rank picks the same examples.
        gen = torch.Generator().manual_seed(1_000_003 * seed + 100 + r)
        picks = choose(strategy, learner.model, data, unlabelled, budget, config, gen, device)
        # Under torchrun, BatchNorm statistics differ slightly between ranks: label rank 0's picks everywhere.
        picks = gather_objects(picks.cpu())[0]
        labelled = torch.cat([labelled, picks.cpu()])
        train_phase(learner, config, trainer, data, labelled, int(config["round_iterations"]), seed, r, device)
        budgets.append(int(labelled.numel()))
        accs.append(accuracy(learner.model, data.test, device))
    counts = torch.bincount(labels_of(data.target)[labelled], minlength=data.num_classes)
    return {
        "budgets": budgets,
        "test_acc": accs,
        "final_acc": accs[-1],
        "label_counts": counts.tolist(),
        "pool_size": pool_size,
        "budget_per_round": budget,
    }
