"""Distilling across architectures: a student of another architecture (``student_arch``),
the linear map between feature widths, attention maps of different sizes, and fine-pruning a
ViT's features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslpoison.data.synthetic import synthetic
from sslpoison.defenses.base import STUDENT_SEED_OFFSET, make_student, width_adapter
from sslpoison.defenses.feature_distill import FeatureDistillConfig
from sslpoison.defenses.finetune import prune_dormant
from sslpoison.defenses.mimic import attention_loss, attention_map
from sslpoison.models import build_backbone
from sslpoison.models.backbone import BackboneConfig, build_encoder


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(
        "vit", image_size=16, patch_size=4, width=32, depth=2, heads=2, in_channels=1,
        mean=[0.3], std=[0.2],
    ).eval()  # fmt: skip


def test_a_student_of_another_architecture_takes_the_teachers_input():
    teacher = tiny_vit()
    arch = BackboneConfig(arch="resnet10", width=0.125)
    student = make_student(teacher, "random", seed=1, arch=arch, size=16)
    assert student.card["arch"] == "resnet10" and student.training
    assert student.mean.flatten().tolist() == pytest.approx([0.3])  # the teacher's
    torch.manual_seed(1 + STUDENT_SEED_OFFSET)
    expected = build_encoder(arch, 1, 16, mean=[0.3], std=[0.2])
    assert all(
        torch.equal(a, b) for a, b in zip(student.parameters(), expected.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match="starts at random"):
        make_student(teacher, "teacher", arch=arch)
    with pytest.raises(ValueError, match="student_arch"):
        FeatureDistillConfig(student="teacher", student_arch={"arch": "resnet10"})


def test_the_width_adapter_maps_the_student_to_the_teachers_width():
    teacher = tiny_vit()
    clean = synthetic(n=8, num_classes=4, size=16, channels=1, seed=0)
    student = build_backbone("resnet10", width=0.125, in_channels=1)  # 64-d features
    head = width_adapter(student, teacher, clean, seed=0)
    assert (head.in_features, head.out_features) == (64, 32)
    assert width_adapter(tiny_vit(1), teacher, clean) is None


def test_attention_maps_of_different_sizes_meet_on_the_smaller_grid():
    student, teacher = torch.rand(2, 8, 8, 8), torch.rand(2, 32, 4, 4)
    # the reference: Σ_c |F|², average-pooled 2×2 to 4×4, each map L2-normalised
    a = F.avg_pool2d(student.pow(2).sum(1, keepdim=True), 2).flatten(1)
    b = teacher.pow(2).sum(1).flatten(1)
    expected = F.mse_loss(
        a / (a.norm(dim=1, keepdim=True) + 1e-6), b / (b.norm(dim=1, keepdim=True) + 1e-6)
    )
    torch.testing.assert_close(attention_loss(student, teacher), expected)
    # same sizes: no pooling, as before
    same = attention_map(teacher)
    torch.testing.assert_close(same, b / (b.norm(dim=1, keepdim=True) + 1e-6))


def test_fine_pruning_masks_a_vits_least_active_features():
    vit = tiny_vit()
    clean = synthetic(n=32, num_classes=4, size=16, channels=1, seed=0)
    x = clean.images.float() / 255
    with torch.no_grad():
        activity = vit(x).abs().mean(0)
    pruned, record = prune_dormant(vit, clean, 0.25)
    expected = sorted(activity.argsort()[:8].tolist())
    assert pruned.card["args"]["pruned"] == expected and record["pruned_channels"] == 8
    with torch.no_grad():
        out = pruned(x)
    assert torch.all(out[:, expected] == 0)
    kept = [c for c in range(32) if c not in expected]
    with torch.no_grad():
        torch.testing.assert_close(out[:, kept], vit(x)[:, kept])
