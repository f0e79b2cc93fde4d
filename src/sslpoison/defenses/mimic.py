"""MIMIC: mutual-information-guided distillation of a clean student from a suspect encoder.

A randomly initialised student (inherits none of the suspect weights) is trained on a small
clean subset (≤ 5 %; public code: 4 % of CIFAR-10) with, for two views x₁, x₂ of each image,

    loss = NT-Xent(g(s(x₁)), g(s(x₂)); τ 0.5)                 the student's own contrastive loss
         + c · (−cos(s(x₁), t(x₁)))                            clone loss (c = 1)
         + Σ_l w_l · AT(s_l(x₁), t_l(x₁))                       attention maps of the 4 stages

where s/t are the student's/teacher's pooled features, g a fresh projection head (dropped
afterwards), s_l/t_l the stage-l feature maps and AT the MSE between L2-normalised attention
maps A(F) = Σ_c |F_c|^p (p = 2; Zagoruyko & Komodakis, ICLR 2017). The weights come from
the mutual information between each stage's feature map and the final representation,
estimated before training with a Donsker–Varadhan (MINE) critic per stage:

    I_l ≈ E[T(F_l, z)] − log E[exp T(F_l, z̃)],   z̃ = z of another image (shuffled),
    w_l = base + scale · I_l / Σ_k I_k              (public code: base 1000, scale 10 000).

Beyond ResNets (ours): the stage maps of a ViT are its patch tokens at the quarters of its
depth, reshaped to B×D×g×g (``forward_stages`` of each backbone); the pooled feature is the
encoder's own output. With ``student_arch`` the student is a fresh encoder of another
architecture (a ResNet distilled from a ViT): attention maps of different sizes are
average-pooled to the smaller grid before they are compared, and when the feature widths
differ the clone term goes through a linear map (trained with the student, dropped).

Facts followed from the public code (``wssun/MIMIC``: ``MIMIC.py``, ``models/AT.py``,
``models/scheduler.py``, ``estimator/DV.py``, ``estimator/TNet.py``): the student is Adam
1e-3, weight decay 1e-6, batch 128; clean share 0.04; the MI is estimated on the
(randomly initialised) student's own layers, with a critic MLP (flattened map ⊕ representation
→ 512 → 512 → 1) trained by Adam 1e-3, weight decay 1e-5, for 200 epochs per stage, negative
estimates counted as 0; the attention and clone terms use the first view only. Ours: the
critics train through the one engine on features extracted once (the network is fixed while
they train), and the estimate is the bound over the whole clean set with the final critic
(public code: mean of the last 10 epochs' estimates); the public code's extra normalisation
of the last stage's map along its width before AT is not reproduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from sslpoison.configbase import Config, CountOrShare
from sslpoison.data.augment import to_float
from sslpoison.data.imageset import ImageSet
from sslpoison.defenses.base import (
    Defended,
    EncoderDefense,
    arch_of,
    check_batch,
    check_student_arch,
    make_student,
    student_training,
    width_adapter,
)
from sslpoison.defenses.feature_distill import clone_loss
from sslpoison.models.backbone import BackboneConfig
from sslpoison.models.heads import mlp_head
from sslpoison.ssl.pretrain import AugmentConfig
from sslpoison.ssl.simclr import nt_xent
from sslpoison.train.checkpoint import set_rng_state
from sslpoison.train.engine import TensorBatches, TrainConfig, fit
from sslpoison.train.optim import OptimConfig
from sslpoison.utils import frozen, seeded

#: The stages whose attention maps are matched (ResNet ``layer1`` … ``layer4``).
STAGES = ("layer1", "layer2", "layer3", "layer4")


def attention_map(
    features: torch.Tensor,
    p: int = 2,
    eps: float = 1e-6,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Σ_c |F_c|^p per position (average-pooled to ``size`` when given and different),
    divided by its L2 norm over the positions (+ eps).

    Shapes: B×C×H×W → B×(H·W) (float32 at least; H×W = ``size`` when given).
    """
    a = features.to(torch.promote_types(features.dtype, torch.float32))
    a = a.abs().pow(p).sum(1)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.adaptive_avg_pool2d(a.unsqueeze(1), size).squeeze(1)
    a = a.flatten(1)
    return a / (a.norm(dim=1, keepdim=True) + eps)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: int = 2) -> torch.Tensor:
    """MSE between the attention maps of two B×C×H×W feature maps (channels may differ;
    maps of different sizes are compared on the smaller grid); the teacher side carries no
    gradient."""
    size = None
    if student.shape[-2:] != teacher.shape[-2:]:
        size = (
            min(student.shape[-2], teacher.shape[-2]),
            min(student.shape[-1], teacher.shape[-1]),
        )
    return F.mse_loss(
        attention_map(student, p, size=size), attention_map(teacher.detach(), p, size=size)
    )


def dv_bound(
    critic: nn.Module, maps: torch.Tensor, reps: torch.Tensor, shuffle: torch.Tensor
) -> torch.Tensor:
    """The Donsker–Varadhan lower bound on I(maps; reps) (Belghazi et al., MINE, ICML 2018).

    E_joint[T] − log E_marginal[e^T], the marginal made by pairing ``maps`` with
    ``reps[shuffle]``. Shapes: maps N×Dm, reps N×Dr, shuffle N (a permutation). In nats.
    """
    joint = critic(maps, reps).float()
    marginal = critic(maps, reps[shuffle]).float()
    n = torch.tensor(float(marginal.numel()), device=marginal.device)
    return joint.mean() - (torch.logsumexp(marginal.flatten(), 0) - n.log())


class Critic(nn.Module):
    """T(m, z): an MLP on the concatenation of a flattened feature map and a representation
    (``dims`` → hidden → hidden → 1). Shapes: N×Dm, N×Dr → N×1."""

    def __init__(self, map_dim: int, rep_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = mlp_head(map_dim + rep_dim, hidden, 1, layers=3, batch_norm=False)

    def forward(self, maps: torch.Tensor, reps: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([maps, reps], dim=1))


class CriticTask(nn.Module):
    """Engine task: a batch of (flattened map, representation) → −DV bound (shuffled within
    the batch by the global RNG, which the engine seeds)."""

    def __init__(self, critic: Critic) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, maps: torch.Tensor, reps: torch.Tensor) -> torch.Tensor:
        shuffle = torch.randperm(maps.shape[0], device=maps.device)
        return -dv_bound(self.critic, maps, reps, shuffle)


class MIConfig(Config):
    """How the per-stage mutual information is estimated (``defense.mi``).

    ``network``: whose layers — ``"student"`` (its random init, as the public code) or
    ``"teacher"``. ``epochs`` / ``batch_size`` / ``lr`` / ``weight_decay``: the critics'
    training (Adam, constant rate); ``hidden``: the critic's width.
    """

    network: Literal["student", "teacher"] = "student"
    epochs: PositiveInt = 200
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-5
    hidden: PositiveInt = 512


@torch.no_grad()
def stage_features(
    network: nn.Module, images: torch.Tensor, batch_size: int = 256
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The four flattened stage maps (N×(C_l·H_l·W_l) each) and the representation (N×D,
    the network's output) of uint8 ``images`` (N×C×H×W), in eval mode, float32, on the
    network's device (``network.forward_stages``)."""
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    maps: list[list[torch.Tensor]] = [[] for _ in STAGES]
    reps = []
    for chunk in images.split(batch_size):
        outs, rep = network.forward_stages(to_float(chunk.to(device)))
        for store, out in zip(maps, outs, strict=True):
            store.append(out.float().flatten(1))
        reps.append(rep.float())
    network.train(was_training)
    return [torch.cat(m) for m in maps], torch.cat(reps)


def mi_lower_bound(
    maps: torch.Tensor, reps: torch.Tensor, cfg: MIConfig, *, seed: int = 0, progress: bool = False
) -> float:
    """I(maps; reps) in nats by MINE: a fresh :class:`Critic` trained (the engine, Adam,
    constant rate) to maximise :func:`dv_bound`, then the bound over all N pairs with a seeded
    shuffle; negative or NaN estimates count as 0. Shapes: maps N×Dm, reps N×Dr."""
    train = TrainConfig(
        epochs=cfg.epochs,
        batch_size=min(cfg.batch_size, reps.shape[0]),
        optimizer=OptimConfig(
            name="adam", lr=cfg.lr, weight_decay=cfg.weight_decay, schedule="constant"
        ),
        amp=False,
        amp_cpu=False,
        checkpoint_every=0,
        progress=progress,
    )
    with seeded(seed):
        critic = Critic(maps.shape[1], reps.shape[1], cfg.hidden).to(reps.device)
    batches = TensorBatches(maps, reps, batch_size=train.batch_size, seed=seed)
    fit(CriticTask(critic), batches, train, seed=seed, desc="mimic MI critic")
    shuffle = torch.randperm(reps.shape[0], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        bound = dv_bound(critic.eval(), maps, reps, shuffle.to(reps.device)).item()
    return max(0.0, bound) if bound == bound else 0.0  # NaN → 0


def estimate_mi(
    network: nn.Module, images: torch.Tensor, cfg: MIConfig, *, seed: int = 0, progress: bool = True
) -> list[float]:
    """I(stage-l map; representation) of ``network`` on uint8 ``images`` for each of the four
    stages (:func:`mi_lower_bound`, one critic per stage)."""
    maps, reps = stage_features(network, images)
    return [mi_lower_bound(m, reps, cfg, seed=seed, progress=progress) for m in maps]


def attention_weights(mi: list[float], base: float, scale: float) -> list[float]:
    """w_l = base + scale · I_l / Σ I (equal shares when every estimate is 0)."""
    total = sum(mi)
    shares = [x / total for x in mi] if total > 0 else [1.0 / len(mi)] * len(mi)
    return [base + scale * s for s in shares]


class MimicTask(nn.Module):
    """Engine task: uint8 batch → two views → MIMIC's loss (see the module docstring).

    The teacher is held outside the module tree (not optimised, not checkpointed, never in
    train mode); the student and its projection head are trained.

    Args:
        student: an encoder whose ``forward_stages`` gives the four B×C_l×H_l×W_l maps and
            its features.
        teacher: the suspect encoder (likewise; channels and map sizes may differ).
        projector: D → proj_dim head for the student's contrastive loss.
        head: a linear map from the student's feature width to the teacher's, or None.
        augment: ``ViewAugment`` giving two views of a uint8 batch.
        weights: the four attention weights w_l.
        temperature: τ of the NT-Xent term; clone: c; power: p of the attention maps.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        projector: nn.Module,
        augment: nn.Module,
        weights: list[float],
        temperature: float,
        clone: float,
        power: int,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.head = head
        self.projector = projector
        self.augment = augment
        self._frozen = (teacher,)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.temperature = temperature
        self.clone = clone
        self.power = power

    def train(self, mode: bool = True) -> MimicTask:
        super().train(mode)
        self._frozen[0].eval()
        return self

    def terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms of one batch: ``contrastive``, ``clone``, ``attention`` (weighted
        sum) and ``attention_<stage>`` (unweighted)."""
        v1, v2 = self.augment(images)
        b = v1.shape[0]
        maps, pooled = self.student.forward_stages(torch.cat([v1, v2]))
        with torch.no_grad():
            t_maps, t_pooled = self._frozen[0].forward_stages(v1)
        z = self.projector(pooled)
        mine = pooled[:b] if self.head is None else self.head(pooled[:b])
        out = {
            "contrastive": nt_xent(z[:b], z[b:], self.temperature),
            "clone": clone_loss(mine, t_pooled) - 1.0,  # −cos, as in the paper
        }
        at = [attention_loss(s[:b], t, self.power) for s, t in zip(maps, t_maps, strict=True)]
        out |= {f"attention_{name}": a for name, a in zip(STAGES, at, strict=True)}
        out["attention"] = (self.weights * torch.stack(at)).sum()
        return out

    def forward(self, images: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        t = self.terms(images)
        return t["contrastive"] + self.clone * t["clone"] + t["attention"]


class MimicConfig(EncoderDefense):
    """The ``defense:`` section for MIMIC (see the module docstring).

    ``temperature``: τ of the student's NT-Xent; ``clone``: weight of the clone term;
    ``attention_base`` / ``attention_scale``: w_l = base + scale · I_l / Σ I; ``power``: p of
    the attention maps; ``proj_dim``: the student's projection head; ``augment``: the two
    views (SimCLR's recipe unless set); ``mi``: the estimator (:class:`MIConfig`).
    """

    name: Literal["mimic"] = "mimic"
    clean: CountOrShare = 0.04
    student_arch: BackboneConfig | None = None
    temperature: PositiveFloat = 0.5
    clone: NonNegativeFloat = 1.0
    attention_base: NonNegativeFloat = 1000.0
    attention_scale: NonNegativeFloat = 10000.0
    power: PositiveInt = 2
    proj_dim: PositiveInt = 128
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    mi: MIConfig = Field(default_factory=MIConfig)
    train: TrainConfig = Field(default_factory=lambda: student_training(epochs=1000))

    @model_validator(mode="after")
    def _student_arch(self) -> MimicConfig:
        return check_student_arch(self)

    def apply(
        self,
        encoder: nn.Module,
        clean: ImageSet,
        *,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
    ) -> Defended:
        return run_mimic(encoder, clean, self, seed=seed, checkpoint_dir=checkpoint_dir)


def run_mimic(
    teacher: nn.Module,
    clean: ImageSet,
    cfg: MimicConfig,
    *,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> Defended:
    """Distil ``teacher`` into a random-init student with MIMIC on the ``clean`` images.

    ``teacher`` is left as given. Returns :class:`Defended` whose record holds the MI
    estimates (``mi``: stage → nats), the attention weights and the last batch's loss terms.

    Raises:
        ValueError: the teacher (or the student) gives no stage maps (``forward_stages``), or
            a batch is larger than the clean set (naming ``defense.train.batch_size``).
    """
    if not callable(getattr(teacher, "forward_stages", None)):
        raise ValueError(
            f"mimic: the suspect encoder ({arch_of(teacher)}) gives no stage maps "
            "(forward_stages), which the attention transfer needs"
        )
    check_batch(cfg, len(clean))
    device = next(teacher.parameters()).device
    images = clean.images.to(device)
    with frozen(teacher):
        student = make_student(teacher, "random", seed, cfg.student_arch, clean.image_size).to(
            device
        )
        if not callable(getattr(student, "forward_stages", None)):
            raise ValueError(f"defense.student_arch: a {arch_of(student)} gives no stage maps")
        head = width_adapter(student, teacher, clean, seed)
        probe = teacher if cfg.mi.network == "teacher" else student
        mi = estimate_mi(probe, images, cfg.mi, seed=seed, progress=cfg.train.progress)
        weights = attention_weights(mi, cfg.attention_base, cfg.attention_scale)
        with seeded(seed):
            dim = int(student.feature_dim)
            projector = mlp_head(dim, dim, cfg.proj_dim)
        task = MimicTask(
            student,
            teacher,
            projector,
            cfg.augment.build("simclr", clean.image_size, clean.channels),
            weights,
            cfg.temperature,
            cfg.clone,
            cfg.power,
            head,
        ).to(device)
        batches = TensorBatches(
            images, batch_size=cfg.train.batch_size, drop_last=cfg.train.drop_last, seed=seed
        )
        result = fit(
            task, batches, cfg.train, seed=seed, checkpoint_dir=checkpoint_dir, desc="mimic"
        )
        with seeded(), torch.no_grad():
            set_rng_state(result.rng)  # the views continue the training's draws
            terms = task.eval().terms(images[: cfg.train.batch_size])
    record: dict[str, Any] = {
        "student_arch": arch_of(student),
        "mi": dict(zip(STAGES, mi, strict=True)),
        "attention_weights": dict(zip(STAGES, weights, strict=True)),
        "loss_terms": {k: round(float(v), 6) for k, v in terms.items()},
    }
    return Defended(student.eval(), result, record)


__all__ = [
    "Critic",
    "MIConfig",
    "MimicConfig",
    "MimicTask",
    "attention_loss",
    "attention_map",
    "attention_weights",
    "dv_bound",
    "estimate_mi",
    "mi_lower_bound",
    "run_mimic",
]
