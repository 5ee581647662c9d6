"""One SDAT-grid training run: a method, a setting, a seed -> last-iterate target accuracy.

The algorithms come from :mod:`smoothopt.adapt` (losses, gradient reversal, the SDAT step) and
:class:`smoothopt.SAM`; this module only wires data, models and optimizers together.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from benchmarks._dist import unwrap, wrap_ddp
from benchmarks._harness import RunContext
from benchmarks.sdat.common import accuracy, build_backbone, inverse_decay, rank_generator, seed_everything
from benchmarks.sdat.data import AdaptationData, forever, make_task

if TYPE_CHECKING:
    from smoothopt.adapt import BottleneckClassifier, CDANLoss, DANNLoss

logger = logging.getLogger(__name__)


def build_classifier(config: dict[str, Any], num_classes: int) -> BottleneckClassifier:
    """The classifier (backbone, bottleneck, head) of a configuration's ``model`` section."""
    from smoothopt.adapt.classifier import BottleneckClassifier

    m = config["model"]
    backbone = build_backbone(m)
    if isinstance(backbone, str):
        return BottleneckClassifier.from_timm(backbone, num_classes, checkpoint_path=m.get("checkpoint"),
                                              bottleneck_dim=m["bottleneck"])
    return BottleneckClassifier(backbone, num_classes, features_dim=backbone.out_features,
                                bottleneck_dim=m["bottleneck"])


def build_adversary(
    config: dict[str, Any], method: str, features_dim: int, num_classes: int, seed: int
) -> DANNLoss | CDANLoss:
    """The adversarial loss module (discriminator inside) of ``method``: DANN or CDAN."""
    from smoothopt.adapt.cdan import CDANLoss
    from smoothopt.adapt.dann import DANNLoss
    from smoothopt.adapt.discriminator import DomainDiscriminator
    from smoothopt.adapt.grl import GradientReversal

    iterations = int(config["iterations"])
    grl = GradientReversal(config["grl_schedule"], max_steps=iterations)
    hidden = (config["discriminator_hidden"],) * 2
    if method.startswith("cdan"):
        randomized = bool(config["randomized"]) or features_dim * num_classes > 4096
        map_dim = config["randomized_dim"] if randomized else features_dim * num_classes
        return CDANLoss(DomainDiscriminator(map_dim, hidden), features_dim, num_classes, grl,
                        entropy_conditioning=config["entropy_conditioning"], randomized=randomized,
                        randomized_dim=config["randomized_dim"],
                        generator=torch.Generator().manual_seed(seed))
    return DANNLoss(DomainDiscriminator(features_dim, hidden), grl)


def sgd_options(config: dict[str, Any]) -> dict[str, Any]:
    """SGD keyword arguments of a configuration (learning rate, momentum, weight decay, Nesterov)."""
    return {"lr": config["lr"], "momentum": config["momentum"], "weight_decay": config["weight_decay"],
            "nesterov": config["nesterov"]}


def _two_optimizers(sam: Any, dopt: torch.optim.Optimizer | None, method: str) -> tuple[Any, torch.optim.Optimizer]:
    if sam is None or dopt is None:
        raise RuntimeError(f"{method} needs a SAM optimizer and a discriminator optimizer")
    return sam, dopt


def _need(losses: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    task, adv = losses
    if adv is None:
        raise RuntimeError("the forward pass returned no adversarial loss")
    return task, adv


def train_method(config: dict[str, Any], setting: str, method: str, seed: int, ctx: RunContext) -> dict[str, Any]:
    """Train ``method`` on ``setting`` with ``seed`` and score its last iterate.

    Methods: ``source_only``; ``dann``/``cdan``/``cdan_mcc`` (plain SGD on task + trade-off *
    adversarial loss); their ``_sdat`` versions (:func:`smoothopt.adapt.sdat_step`, SAM on the task
    loss only); ``dann_sam`` (SAM whose ascent follows the whole DANN objective).

    Returns:
        ``test_acc`` (held-out target), ``source_acc`` (source training data) and the last losses.
    """
    from smoothopt.adapt.mcc import mcc_loss
    from smoothopt.adapt.sdat import sdat_step
    from smoothopt.sam import SAM

    data: AdaptationData = make_task(config["data"], seed, config["settings"][setting])
    device = torch.device(ctx.device)
    seed_everything(seed)
    model = build_classifier(config, data.num_classes).to(device)
    sdat = method.endswith("_sdat")
    adversarial = method != "source_only"
    adv = None
    if adversarial:
        adv = build_adversary(config, method, model.features_dim, data.num_classes, seed).to(device)
        adv.discriminator = wrap_ddp(adv.discriminator, device)
    ddp_model = wrap_ddp(model, device)

    # Optimizers: the classifier's (SAM for SDAT and the whole-objective control) and the discriminator's.
    sgd = sgd_options(config)
    groups = model.param_groups(config["lr"], config["model"]["backbone_lr_mult"])
    rho = float(config["rho"][setting])
    sam = SAM(groups, torch.optim.SGD, rho=rho, **sgd) if (sdat or method == "dann_sam") else None
    opt: torch.optim.Optimizer = sam if sam is not None else torch.optim.SGD(groups, **sgd)
    optimizers = [opt]
    dopt: torch.optim.Optimizer | None = None
    if adv is not None:
        dopt = torch.optim.SGD(unwrap(adv.discriminator).parameters(), **sgd)
        adv.grl.attach(dopt)
        optimizers.append(dopt)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, inverse_decay(config["lr_gamma"], config["lr_decay"]))
                  for o in optimizers]

    gs, gt = rank_generator(seed, 1), rank_generator(seed, 2)
    src = forever(data.source, config["batch_size"], gs, workers=config["workers"])
    tgt = forever(data.target, config["batch_size"], gt, workers=config["workers"])
    use_mcc = "_mcc" in method
    trade_off = float(config["trade_off"])
    last: dict[str, float] = {}

    for _ in ctx.progress(range(int(config["iterations"])), desc=f"{setting} {method} seed {seed}"):
        x_s, y_s = next(src)
        x_t, _ = next(tgt)
        x_s, y_s, x_t = x_s.to(device), y_s.to(device), x_t.to(device)
        n_s = x_s.shape[0]

        def forward(need_adversarial: bool, x_s=x_s, y_s=y_s, x_t=x_t, n_s=n_s):
            logits, features = ddp_model(torch.cat([x_s, x_t]))
            z_s, z_t = logits[:n_s], logits[n_s:]
            task = F.cross_entropy(z_s, y_s)
            if use_mcc:
                task = task + config["mcc_weight"] * mcc_loss(z_t, config["mcc_temperature"])
            if not need_adversarial or adv is None:
                return task, None
            f_s, f_t = features[:n_s], features[n_s:]
            loss_adv = adv(z_s, f_s, z_t, f_t) if method.startswith("cdan") else adv(f_s, f_t)
            return task, loss_adv

        if sdat:
            sam_opt, d_opt = _two_optimizers(sam, dopt, method)
            losses = sdat_step(forward, sam_opt, d_opt, trade_off=trade_off,
                               adversarial_at="perturbed" if config["adv_at_perturbed"] else "clean")
            last = {"task_loss": float(losses.task_loss), "adv_loss": float(losses.adversarial_loss)}
        elif method == "dann_sam":
            # NOTE: the control perturbs the classifier only (the discriminator is the adversary's),
            # but along the gradient of the whole objective: task + trade_off * adversarial.
            sam_opt, d_opt = _two_optimizers(sam, dopt, method)
            sam_opt.zero_grad(set_to_none=True)
            d_opt.zero_grad(set_to_none=True)
            task, loss_adv = _need(forward(True))
            (task + trade_off * loss_adv).backward()
            sam_opt.first_step(zero_grad=True)
            d_opt.zero_grad(set_to_none=True)
            task2, loss_adv2 = _need(forward(True))
            (task2 + trade_off * loss_adv2).backward()
            d_opt.step()
            sam_opt.second_step(zero_grad=True)
            last = {"task_loss": task.item(), "adv_loss": loss_adv.item()}
        else:
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            task, loss_adv = forward(adversarial)
            loss = task if loss_adv is None else task + trade_off * loss_adv
            loss.backward()
            for o in optimizers:
                o.step()
            last = {"task_loss": task.item(), "adv_loss": loss_adv.item() if loss_adv is not None else 0.0}
        for s in schedulers:
            s.step()

    net = unwrap(ddp_model)
    return {
        "test_acc": accuracy(net, data.test, device),
        "source_acc": accuracy(net, data.source, device),
        "target_pool_acc": accuracy(net, data.target_eval, device),
        "rho": rho if (sdat or method == "dann_sam") else 0.0,
        **last,
    }
