"""Single-branch students: a staged backbone plus a pooled linear classifier."""

from __future__ import annotations

from torch import Tensor, nn

from kdbench.models.backbones import build_backbone
from kdbench.models.outputs import StudentOut


class Student(nn.Module):
    """S_B (backbone) + G_Sc (global average pool + linear); returns ``StudentOut``."""

    def __init__(self, backbone: str, num_classes: int = 2, pretrained: str | None = None) -> None:
        super().__init__()
        self.name = backbone
        self.backbone = build_backbone(backbone, pretrained, "student.pretrained")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.backbone.num_features, num_classes)

    @property
    def stage_channels(self) -> list[int]:
        return self.backbone.stage_channels

    def forward(self, x: Tensor, preact: bool = False) -> StudentOut:
        """Logits, stage maps, pooled vector; with ``preact`` also the pre-ReLU stage maps."""
        if preact:
            with self.backbone.capture_preact() as maps:
                feats = self.backbone(x)
        else:
            feats, maps = self.backbone(x), []
        pooled = self.pool(feats[-1]).flatten(1)
        return StudentOut(logits=self.fc(pooled), feats=feats, pooled=pooled, preact=maps)


class WrappedStudent(nn.Module):
    """A module around a student (``self.student``) that keeps the student interface: its
    stage widths, backbone, classifier and pool are the wrapped student's."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.name = getattr(student, "name", "student")

    @property
    def stage_channels(self) -> list[int]:
        return self.student.stage_channels

    @property
    def backbone(self) -> nn.Module:
        return self.student.backbone

    @property
    def fc(self) -> nn.Module:
        return self.student.fc

    @property
    def pool(self) -> nn.Module:
        return self.student.pool


def create_student(name: str, pretrained: str | None = None) -> Student:
    """Create a student by backbone name (resnet18_thin, resnet34_thin, xception)."""
    return Student(name, pretrained=pretrained)
