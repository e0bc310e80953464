"""Dual-branch RGB + frequency teacher with RFAMs and the projectors G_Tr / G_Tf."""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.models.backbones import adapt_input_channels, build_backbone
from kdbench.models.frequency import FrequencyView
from kdbench.models.outputs import TeacherOut
from kdbench.models.rfam import RFAM

TEACHER_FIELDS = frozenset({"rgb", "freq", "rgb_proj", "freq_proj", "rgb_preact",
                            "freq_preact"})


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def rgb_projector(cin: int, dim: int) -> nn.Sequential:
    """G_Tr: three conv+BN+ReLU."""
    layers = _conv_bn_relu(cin, dim) + _conv_bn_relu(dim, dim) + _conv_bn_relu(dim, dim)
    return nn.Sequential(*layers)


def freq_projector(cin: int, dim: int) -> nn.Sequential:
    """G_Tf: five convs, BN+ReLU after the 2nd and the 4th."""
    return nn.Sequential(
        nn.Conv2d(cin, dim, 3, padding=1, bias=False),
        *_conv_bn_relu(dim, dim),
        nn.Conv2d(dim, dim, 3, padding=1, bias=False),
        *_conv_bn_relu(dim, dim),
        nn.Conv2d(dim, dim, 1),
    )


class DualBranchTeacher(nn.Module):
    """RGB branch on x, frequency branch on x^F, RFAMs after stages 1-3, head on concat.

    ``forward(x, needs)`` always runs both backbones (the RFAMs couple them) but only returns the
    fields in ``needs`` and only runs the projectors that are asked for. ``needs=None`` means all.
    """

    kind = "dual"
    rgb_proj_nonnegative = True  # F_Tr = G_Tr(.) ends in BN + ReLU (a projector may end alike)

    def __init__(
        self,
        backbone: str,
        proj_dim: int = 256,
        hp_cutoff: float = 0.33,
        pretrained: str | None = None,
        freq_backbone: str | None = None,
        freq_view: str = "dct",
        wavelet: str = "haar",
        levels: int = 1,
    ) -> None:
        super().__init__()
        self.name = backbone if freq_backbone in (None, backbone) else (
            f"{backbone}+{freq_backbone}")
        self.rgb_branch = build_backbone(backbone, pretrained, "teacher.pretrained")
        self.freq_branch = build_backbone(freq_backbone or backbone, pretrained,
                                          "teacher.pretrained")
        for branch in (self.rgb_branch, self.freq_branch):
            if not branch.sequential or len(branch.stage_channels) < 4:
                why = ("gives fewer than four stage maps" if branch.sequential else
                       "runs its stages inside timm's feature hooks")
                raise KdbenchError(
                    f"teacher.kind=dual: backbone {branch.name} {why}, but the RFAMs couple the "
                    "branches after stages 1-3; use another backbone or teacher.kind=single")
        if freq_view == "dwt":  # the stacked wavelet bands: the frequency stem reads them all
            from kdbench.models.wavelet import WaveletView

            self.freq_view: nn.Module = WaveletView(wavelet, levels)
            adapt_input_channels(self.freq_branch.stem, self.freq_view.channels(3))
        else:
            self.freq_view = FrequencyView(hp_cutoff)
        chans, fchans = self.rgb_branch.stage_channels, self.freq_branch.stage_channels
        self.rfams = nn.ModuleList(RFAM(c, cf) for c, cf in zip(chans[:3], fchans[:3]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[-1] + fchans[-1], 2)
        self.proj_dim = proj_dim
        self.rgb_proj = rgb_projector(chans[-1], proj_dim)
        self.freq_proj = freq_projector(fchans[-1], proj_dim)
        self.aux_rgb = nn.Linear(proj_dim, 2)
        self.aux_freq = nn.Linear(proj_dim, 2)

    @property
    def stage_channels(self) -> list[int]:
        return self.rgb_branch.stage_channels

    def branch_channels(self, branch: str) -> list[int]:
        """The stage widths of the ``rgb`` or ``freq`` branch."""
        return getattr(self, f"{branch}_branch").stage_channels

    def forward(self, x: Tensor, needs: set[str] | frozenset[str] | None = None) -> TeacherOut:
        needs = TEACHER_FIELDS if needs is None else needs
        with ExitStack() as stack:
            pre = {b: stack.enter_context(getattr(self, f"{b}_branch").capture_preact())
                   for b in ("rgb", "freq") if f"{b}_preact" in needs}
            r, f = self.rgb_branch.stem(x), self.freq_branch.stem(self.freq_view(x))
            rgb_feats, freq_feats = [], []
            for i, (sr, sf) in enumerate(zip(self.rgb_branch.stages, self.freq_branch.stages)):
                r, f = sr(r), sf(f)
                if i < len(self.rfams):
                    r, f = self.rfams[i](r, f)
                rgb_feats.append(r)
                freq_feats.append(f)
        rgb_pooled, freq_pooled = self.pool(r).flatten(1), self.pool(f).flatten(1)
        out = TeacherOut(logits=self.fc(torch.cat([rgb_pooled, freq_pooled], dim=1)))
        if "rgb" in needs:
            out.rgb, out.rgb_pooled = rgb_feats, rgb_pooled
        if "freq" in needs:
            out.freq, out.freq_pooled = freq_feats, freq_pooled
        if "rgb_proj" in needs:
            out.rgb_proj = self.rgb_proj(r)
            out.aux_logits["rgb"] = self.aux_rgb(self.pool(out.rgb_proj).flatten(1))
        if "freq_proj" in needs:
            out.freq_proj = self.freq_proj(f)
            out.aux_logits["freq"] = self.aux_freq(self.pool(out.freq_proj).flatten(1))
        out.rgb_preact, out.freq_preact = pre.get("rgb", []), pre.get("freq", [])
        return out
