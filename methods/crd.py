"""CRD: contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020) on the
pooled vectors, after the reference implementation RepDistiller (``crd/criterion.py``:
CRDLoss, Embed, ContrastLoss; ``crd/memory.py``: ContrastMemory; ``dataset/cifar100.py``:
CIFAR100InstanceSample, mode ``exact``), written anew for the Distiller interface."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdbench.errors import KdbenchError
from kdbench.methods.base import full_precision
from kdbench.methods.feature_kd import FeatureKD, branch_channels, teacher_pooled
from kdbench.models.outputs import StudentOut, TeacherOut

EPS = 1e-7  # the reference's eps in ContrastLoss
REFERENCE_N = 50_000  # CIFAR-100's training set, for which the reference uses nce_k = 16384


@full_precision
def crd_nce_loss(x: Tensor, n_data: int) -> Tensor:
    """The NCE loss of the reference's ContrastLoss (the paper's Eq. 18) on scores ``x``
    [B, K+1] whose column 0 is the positive: with the noise probability Pn = 1/n_data and
    m = K, -(sum log(x_0 / (x_0 + m Pn + eps)) + sum log(m Pn / (x_j + m Pn + eps))) / B."""
    bsz, m = x.shape[0], x.shape[1] - 1
    mpn = m / float(n_data)
    p_pos = x[:, 0]
    log_d1 = torch.log(p_pos / (p_pos + mpn + EPS))
    p_neg = x[:, 1:]
    log_d0 = torch.log(torch.full_like(p_neg, mpn) / (p_neg + mpn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / bsz


@full_precision
def contrast_scores(memory: Tensor, idx: Tensor, v: Tensor, nce_t: float) -> Tensor:
    """exp(<memory[idx[b, j]], v[b]> / nce_t) [B, K+1] (not yet divided by Z), as the
    reference's ContrastMemory: the bank rows are gathered without gradient, ``v`` keeps its."""
    weight = memory.index_select(0, idx.reshape(-1)).detach().view(*idx.shape, -1)
    return torch.exp(torch.bmm(weight, v.unsqueeze(2)).squeeze(2) / nce_t)


@full_precision
def l2_normalize(x: Tensor) -> Tensor:
    """x / ||x||_2 per row (the reference's Normalize(2): no epsilon)."""
    return x / x.pow(2).sum(1, keepdim=True).sqrt()


class Embed(nn.Module):
    """Linear(dim_in, feat_dim) then L2 normalisation of each row (the reference's Embed)."""

    def __init__(self, dim_in: int, feat_dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, feat_dim)

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(self.linear(x.flatten(1)))


class ContrastBank(nn.Module):
    """The reference's ContrastMemory for one branch: buffers ``memory_s`` (student side,
    the reference's memory_v1) and ``memory_t`` (teacher side, memory_v2), [N, feat_dim], and
    ``z`` = (Z_v1, Z_v2), the normalisers, -1 until the first step estimates them as
    mean(scores) * N and then fixed. The buffers exist once :meth:`allocate` has run."""

    memory_s: Tensor
    memory_t: Tensor
    z: Tensor

    def __init__(self, feat_dim: int, nce_t: float, nce_m: float) -> None:
        super().__init__()
        self.feat_dim, self.nce_t, self.nce_m = feat_dim, nce_t, nce_m

    def allocate(self, n: int, device: torch.device | None = None) -> None:
        """Bank rows uniform in [-stdv, stdv], stdv = 1 / sqrt(feat_dim / 3), and Z unset."""
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        for name in ("memory_s", "memory_t"):
            rows = torch.rand(n, self.feat_dim, device=device).mul_(2 * stdv).add_(-stdv)
            self.register_buffer(name, rows)
        self.register_buffer("z", torch.full((2,), -1.0, device=device))

    @property
    def n_data(self) -> int:
        return self.memory_s.shape[0]

    def forward(self, e_s: Tensor, e_t: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Scores [B, K+1] of the student embedding against the teacher bank (the reference's
        out_v1) and of the teacher embedding against the student bank (out_v2), each divided
        by its Z; then the rows ``idx[:, 0]`` of both banks move towards the new embeddings."""
        out_s = contrast_scores(self.memory_t, idx, e_s, self.nce_t)
        out_t = contrast_scores(self.memory_s, idx, e_t, self.nce_t)
        with torch.no_grad():  # set Z on the first step (no host sync: a where, not an if)
            estimate = torch.stack([out_s.mean(), out_t.mean()]) * self.n_data
            self.z.copy_(torch.where(self.z < 0, estimate, self.z))
        z = self.z.clone()
        self.update(idx[:, 0], e_s, e_t)
        return out_s / z[0], out_t / z[1]

    @torch.no_grad()
    def update(self, pos: Tensor, e_s: Tensor, e_t: Tensor) -> None:
        """rows[pos] <- normalise(nce_m * rows[pos] + (1 - nce_m) * embedding), both banks."""
        for memory, v in ((self.memory_s, e_s), (self.memory_t, e_t)):
            rows = memory.index_select(0, pos).mul_(self.nce_m)
            rows.add_(v.detach().to(memory.dtype), alpha=1 - self.nce_m)
            memory.index_copy_(0, pos, rows / rows.pow(2).sum(1, keepdim=True).sqrt())


class CRD(FeatureKD):
    """CRD: contrastive representation distillation (Tian et al., 2020) on the pooled vectors.

    L_kd = CRD(s.pooled, t.rgb_pooled) (+ the same with separate
    embeddings and banks against t.freq_pooled in ``both`` mode), each term the reference's
    s_loss + t_loss, weighted by ``beta``.

    - Embeddings (``self.adaptors[branch]``: ``s``, ``t``) are trained by the optimizer; the
      memory banks (``self.banks[branch]``) are buffers only, allocated by
      :meth:`on_train_data` over the N training frames (index = a batch's ``pos``) and saved
      in the state dict, so a resumed run continues with the same banks and Z.
    - Negatives: index 0 of the contrast set is the frame itself (the reference's mode
      ``exact``); the k others are drawn uniformly, without replacement unless the pool has
      fewer than k frames, from torch's global random generator (seeded by the trainer, so a
      run is deterministic), out of ``negatives``: ``any`` (the default) every training
      frame, ``other_class`` the frames of the other class(es), the reference's own rule (its
      ``cls_negative``). With CIFAR-100's 100 classes the two are nearly the same draw; with
      two classes ``other_class`` gives every fake frame the same pool of all real frames,
      and the student stayed at the majority rate (docs/distillers.md).
    - k: the reference draws nce_k = 16384 negatives from CIFAR-100's 50000 training images;
      here the same fraction of the training set is used, k = max(1, min(nce_k, N_pool,
      round(nce_k * N / 50000))): never more than the reference's nce_k (which it also keeps
      on ImageNet), and capped by the smallest pool (so no frame is drawn twice for a
      positive); the value is in ``run_info["nce_k_effective"]``. Each step gathers
      B (k+1) feat_dim fp32 values per bank side (2 per branch, kept for backward): at most
      about 0.5 GB per side at batch 64.
    - Data parallel: under torchrun each rank updates its own banks (and estimates its own Z)
      with its own slice of the batch; the banks are rank-local, as in the reference's
      single-GPU code (they are not synchronised, so the ranks' state digests differ).
    """

    weight_key = "beta"

    def __init__(self, student: nn.Module, teacher: nn.Module, mode: str, **hparams) -> None:
        super().__init__(student, teacher, mode, **hparams)
        self.feat_dim = int(hparams.get("feat_dim", 128))
        self.nce_k = int(hparams.get("nce_k", 16384))
        self.nce_t = float(hparams.get("nce_t", 0.07))
        self.nce_m = float(hparams.get("nce_m", 0.5))
        self.negatives = str(hparams.get("negatives", "any"))
        ds = student.stage_channels[-1]
        self.banks = nn.ModuleDict()
        for branch in self.branches:
            dt = branch_channels(teacher, branch)[-1]
            self.adaptors[branch] = nn.ModuleDict(
                {"s": Embed(ds, self.feat_dim), "t": Embed(dt, self.feat_dim)})
            self.banks[branch] = ContrastBank(self.feat_dim, self.nce_t, self.nce_m)
        self.k_eff = 0
        self.classes: list[int] = []
        self._contrast: Tensor | None = None

    def on_train_data(self, labels: Tensor) -> None:
        """Allocate the banks over the N = len(labels) training frames, the other-class pools
        of each class, and the effective number of negatives."""
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        n = len(labels)
        device = next(self.adaptors.parameters()).device
        self.classes = sorted(int(c) for c in labels.unique())
        if len(self.classes) < 2:
            raise KdbenchError(f"CRD needs training frames of two classes to draw negatives "
                               f"from, got only label(s) {self.classes}")
        self.register_buffer("frame_labels", labels.to(device), persistent=False)
        pools = []
        for i, c in enumerate(self.classes):
            # other_class: the reference's exact mode; any: every frame (the CRD paper's
            # instance negatives; a drawn frame is its own positive at most k / N of the time)
            pool = torch.nonzero(labels != c if self.negatives == "other_class"
                                 else torch.ones_like(labels, dtype=torch.bool)).flatten()
            self.register_buffer(f"negatives_{i}", pool.to(device), persistent=False)
            pools.append(len(pool))
        self.k_eff = max(1, min(self.nce_k, *pools, round(self.nce_k * n / REFERENCE_N)))
        self.run_info["nce_k_effective"] = self.k_eff
        for bank in self.banks.values():
            bank.allocate(n, device)

    def contrast_indices(self, pos: Tensor) -> Tensor:
        """[B, k+1] frame indices: column 0 the frames ``pos`` themselves, columns 1.. k
        negatives of each, uniform over the frames whose label differs from the frame's."""
        if not self.classes:
            raise RuntimeError("CRD.on_train_data(labels) must run before training")
        labels = self.frame_labels
        pos = pos.to(labels.device, torch.long)
        idx = torch.empty(len(pos), self.k_eff + 1, dtype=torch.long, device=pos.device)
        idx[:, 0] = pos
        own = labels[pos]
        for i, c in enumerate(self.classes):
            rows = torch.nonzero(own == c).flatten()
            if len(rows) == 0:
                continue
            pool: Tensor = getattr(self, f"negatives_{i}")
            if self.k_eff <= len(pool):  # a random permutation per row, its first k
                pick = torch.rand(len(rows), len(pool), device=pos.device).argsort(dim=1)
                pick = pick[:, : self.k_eff]
            else:
                pick = torch.randint(len(pool), (len(rows), self.k_eff), device=pos.device)
            idx[rows, 1:] = pool[pick]
        return idx

    def forward_train(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One contrast set per frame for the step (shared by the branches), then FeatureKD's
        CE + beta * sum of the branch losses."""
        self._contrast = self.contrast_indices(batch["pos"])
        try:
            return super().forward_train(batch)
        finally:
            self._contrast = None

    def branch_loss(self, s: StudentOut, t: TeacherOut, branch: str) -> Tensor:
        """The reference's CRDLoss: s_loss (student embedding vs teacher bank) + t_loss
        (teacher embedding vs student bank), with this step's contrast indices."""
        embed, bank = self.adaptors[branch], self.banks[branch]
        e_s = embed["s"](s.pooled)
        e_t = embed["t"](teacher_pooled(t, branch))
        out_s, out_t = bank(e_s, e_t, self._contrast)
        return crd_nce_loss(out_s, bank.n_data) + crd_nce_loss(out_t, bank.n_data)
