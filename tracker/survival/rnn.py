"""GRU over visit sequences with a discrete-time survival head; its loss and training loop.

Imported only when training or predicting (it imports torch at module level).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from tracker.survival.config import SurvivalModelConfig

CENSORED_BIN_WEIGHT = 0.5  # actuarial convention: a patient censored inside a bin is at risk for half of it
N_HEAD_OUTPUTS = 2  # risk score and time-trend coefficient


class RiskNet(nn.Module):
    """Visit embedding -> GRU cell stepped over visits -> per-visit hazard logits for each time bin.

    The GRU cell is stepped one visit at a time so the output after visit k depends on visits 1..k only and is
    computed with exactly the same operations whatever follows it.
    """

    tau: torch.Tensor  # a registered buffer

    def __init__(self, n_inputs: int, hidden: int, n_bins: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU())
        self.cell = nn.GRUCell(hidden, hidden)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden + n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, N_HEAD_OUTPUTS)
        )
        # logit h_b = baseline_b + risk + trend * tau_b: a free baseline hazard per bin, a proportional-odds
        # risk score and one smooth time-varying effect (tau runs from -1 to 1 over the horizon)
        self.baseline = nn.Parameter(torch.zeros(n_bins))
        self.register_buffer("tau", torch.linspace(-1.0, 1.0, n_bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (patients, visits, inputs) -> hazard logits (patients, visits, bins)."""
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        out = []
        for t in range(x.shape[1]):
            h = self.cell(self.embed(x[:, t]), h)
            out.append(self.head(torch.cat([h, x[:, t]], dim=-1)))
        scores = torch.stack(out, dim=1)
        return self.baseline + scores[..., :1] + scores[..., 1:2] * self.tau


class EnsembleNet(nn.Module):
    """Several RiskNets whose survival curves are averaged; returns the hazard logits of the averaged curve.

    The curves are averaged (a mixture of the members' predictions), not the logits; the output stays causal because
    every member is.
    """

    def __init__(self, members: list[RiskNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("EnsembleNet needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def n_inputs(self) -> int:
        """Width of one visit's input vector."""
        return int(cast(nn.Linear, cast(RiskNet, self.members[0]).embed[0]).in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (patients, visits, inputs) -> hazard logits (patients, visits, bins) of the mean survival curve."""
        if len(self.members) == 1:
            return self.members[0](x)
        log_s = torch.stack(
            [torch.cumsum(nn.functional.logsigmoid(-m(x).double()), dim=-1) for m in self.members]
        ).logsumexp(dim=0) - math.log(len(self.members))
        # log(1 - h_b) = log S_b - log S_(b-1), then logit h = log(h) - log(1 - h)
        log_keep = (log_s - nn.functional.pad(log_s[..., :-1], (1, 0))).clamp(max=-1e-12)
        return torch.log(-torch.expm1(log_keep)) - log_keep


def survival_weights(bin_index: torch.Tensor, event: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, ...]:
    """Per-bin weights of log(1 - h) and log h in the likelihood of one (bin, event) target.

    Bins before the target bin count as survived; an event bin counts log h; a censored bin counts
    ``CENSORED_BIN_WEIGHT`` * log(1 - h); bins after the target bin count nothing.
    """
    bins = torch.arange(n_bins, device=bin_index.device)
    b = bin_index.unsqueeze(-1)
    ev = event.unsqueeze(-1).to(torch.float32)
    at = (bins == b).to(torch.float32)
    w_survive = (bins < b).to(torch.float32) + CENSORED_BIN_WEIGHT * at * (1.0 - ev)
    w_event = at * ev
    return w_survive, w_event


def discrete_time_nll(
    logits: torch.Tensor, bin_index: torch.Tensor, event: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of discrete-time survival targets with right censoring.

    Parameters
    ----------
    logits : (n, bins) hazard logits, h = sigmoid(logit).
    bin_index : (n,) bin of the event/censoring time; == bins means followed past the horizon event-free.
    event : (n,) 1 = event in that bin, 0 = censored.
    weight : optional (n,) per-row weights (e.g. a validity mask); the mean is over their sum.
    """
    w_survive, w_event = survival_weights(bin_index, event, logits.shape[-1])
    ll = (w_survive * nn.functional.logsigmoid(-logits) + w_event * nn.functional.logsigmoid(logits)).sum(-1)
    if weight is None:
        return -ll.mean()
    return -(ll * weight).sum() / weight.sum().clamp_min(1.0)


def ranking_loss(
    logits: torch.Tensor, bin_index: torch.Tensor, event: torch.Tensor, group: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Dynamic-DeepHit style ranking term among rows of the same group (visit index).

    For an event row i in bin b_i and any row j of the same group still event-free after b_i, penalise
    exp(-(F_i(b_i) - F_j(b_i)) / sigma) with F = 1 - S the cumulative incidence.
    """
    n_bins = logits.shape[-1]
    cif = 1.0 - torch.exp(torch.cumsum(nn.functional.logsigmoid(-logits), dim=-1))
    is_event = (event == 1) & (bin_index < n_bins)
    if not bool(is_event.any()):
        return logits.new_zeros(())
    ei = torch.nonzero(is_event).squeeze(-1)
    bi = bin_index[ei]
    f_i = cif[ei, bi]
    f_j = cif[:, bi].T  # (events, rows): CIF of every row at each event's bin
    pair = (bin_index.unsqueeze(0) > bi.unsqueeze(1)) & (group.unsqueeze(0) == group[ei].unsqueeze(1))
    if not bool(pair.any()):
        return logits.new_zeros(())
    penalty = torch.exp(-(f_i.unsqueeze(1) - f_j) / sigma)
    return (penalty * pair).sum() / pair.sum()


@contextlib.contextmanager
def deterministic_torch(seed: int, num_threads: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and a fixed thread count; restore the global settings after."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    """Best network (on CPU), its validation loss and the number of epochs run."""

    net: RiskNet
    best_val_loss: float
    epochs: int
    best_epoch: int


def _initial_bias(bin_index: np.ndarray, event: np.ndarray, valid: np.ndarray, n_bins: int) -> float:
    """Logit of the crude per-bin hazard (events / bins at risk) to start the head near the marginal."""
    b, e = bin_index[valid], event[valid]
    exposure = np.minimum(b, n_bins).sum() + CENSORED_BIN_WEIGHT * ((e == 0) & (b < n_bins)).sum()
    hazard = float(np.clip(e.sum() / max(exposure + e.sum(), 1.0), 1e-4, 0.5))
    return math.log(hazard / (1.0 - hazard))


def fit_network(
    x: np.ndarray,
    bin_index: np.ndarray,
    event: np.ndarray,
    valid: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    cfg: SurvivalModelConfig,
    seed: int,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train on every visit prefix of the training patients; early-stop on the validation patients' NLL.

    Arrays are per patient: x (P, T, D), bin_index/event/valid (P, T). ``train_rows``/``val_rows`` index patients.
    """
    device = pick_device(cfg.device)
    with deterministic_torch(seed, cfg.num_threads):
        net = RiskNet(x.shape[2], cfg.hidden_size, cfg.n_bins, cfg.dropout)
        with torch.no_grad():
            net.baseline.fill_(_initial_bias(bin_index[train_rows], event[train_rows], valid[train_rows], cfg.n_bins))
        net.to(device)
        xt = torch.as_tensor(x, dtype=torch.float32, device=device)
        bt = torch.as_tensor(bin_index, dtype=torch.long, device=device)
        et = torch.as_tensor(event, dtype=torch.long, device=device)
        vt = torch.as_tensor(valid, dtype=torch.float32, device=device)
        group = torch.arange(x.shape[1], device=device).expand(x.shape[0], -1)
        # the per-bin baseline hazard is not shrunk: decay would pull every hazard towards 0.5
        decayed = [p for name, p in net.named_parameters() if name != "baseline"]
        opt = torch.optim.Adam(
            [{"params": decayed, "weight_decay": cfg.weight_decay}, {"params": [net.baseline], "weight_decay": 0.0}],
            lr=cfg.learning_rate,
        )
        gen = torch.Generator().manual_seed(seed)
        train_idx = torch.as_tensor(train_rows, dtype=torch.long)
        val_idx = torch.as_tensor(val_rows if len(val_rows) else train_rows, dtype=torch.long)
        batch = cfg.batch_size or len(train_idx)

        def loss_on(rows: torch.Tensor, with_ranking: bool) -> torch.Tensor:
            rows = rows.to(device)
            logits = net(xt[rows])
            m = vt[rows].reshape(-1)
            flat = logits.reshape(-1, logits.shape[-1])
            loss = discrete_time_nll(flat, bt[rows].reshape(-1), et[rows].reshape(-1), m)
            if with_ranking and cfg.ranking_weight > 0:
                keep = m > 0
                loss = loss + cfg.ranking_weight * ranking_loss(
                    flat[keep],
                    bt[rows].reshape(-1)[keep],
                    et[rows].reshape(-1)[keep],
                    group[rows].reshape(-1)[keep],
                    cfg.ranking_sigma,
                )
            return loss

        best_loss, best_state, best_epoch, since_best = math.inf, copy.deepcopy(net.state_dict()), 0, 0
        epoch = 0
        for epoch in range(1, cfg.max_epochs + 1):
            net.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for start in range(0, len(perm), batch):
                opt.zero_grad()
                loss_on(perm[start : start + batch], True).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                val_loss = float(loss_on(val_idx, False))
            if progress is not None:
                progress(epoch, cfg.max_epochs, val_loss)
            if val_loss < best_loss - 1e-6:
                best_loss, best_state, best_epoch, since_best = val_loss, copy.deepcopy(net.state_dict()), epoch, 0
            else:
                since_best += 1
                if since_best >= cfg.patience and epoch >= cfg.min_epochs:
                    break
        net.load_state_dict(best_state)
        net.to("cpu").eval()
    return TrainResult(net, best_loss, epoch, best_epoch)


def predict_logits(net: RiskNet | EnsembleNet, x: np.ndarray) -> np.ndarray:
    """Hazard logits (P, T, bins) on CPU (float32 for one network, float64 for an ensemble), without gradients."""
    with torch.no_grad():
        return net(torch.as_tensor(x, dtype=torch.float32)).numpy()
