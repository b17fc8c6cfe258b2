"""Discrete-time likelihood with censoring: known optimum, Kaplan-Meier agreement, gradients after censoring."""

import numpy as np
import pytest
import torch

from tracker.survival import SurvivalModelConfig, train_model
from tracker.survival.config import DAYS_PER_MONTH
from tracker.survival.data import remaining_to_bins
from tracker.survival.metrics import kaplan_meier, step_at
from tracker.survival.rnn import discrete_time_nll, ranking_loss
from tracker.survival.toy import exponential_cohort

HAZARD = 0.05  # per month


def _binned_exponential(n: int, seed: int):
    cfg = SurvivalModelConfig(horizon_months=36, bin_months=1)
    _, events = exponential_cohort(n, HAZARD, censor_max_months=48.0, seed=seed)
    bins, ev = remaining_to_bins(events["time_days"].to_numpy(), events["event"].to_numpy(), cfg)
    return cfg, events, bins, ev


def test_actuarial_hazard_is_the_likelihood_optimum_and_matches_km():
    cfg, events, bins, ev = _binned_exponential(5000, seed=0)
    k = cfg.n_bins
    entering = np.array([(bins >= j).sum() for j in range(k)], dtype=float)
    deaths = np.array([((bins == j) & (ev == 1)).sum() for j in range(k)], dtype=float)
    censored = np.array([((bins == j) & (ev == 0)).sum() for j in range(k)], dtype=float)
    hazard = deaths / (entering - censored / 2)  # life-table (actuarial) estimate
    logits = torch.tensor(np.log(hazard / (1 - hazard)), dtype=torch.float64, requires_grad=True)
    loss = discrete_time_nll(logits.expand(len(bins), k), torch.as_tensor(bins), torch.as_tensor(ev))
    loss.backward()
    assert float(logits.grad.abs().max()) < 1e-10  # stationary point of the likelihood
    surv = np.cumprod(1 - hazard)
    months = events["time_days"].to_numpy() / DAYS_PER_MONTH
    kt, ks = kaplan_meier(months, events["event"].to_numpy())
    grid = np.arange(1, k + 1, dtype=float)
    np.testing.assert_allclose(surv, step_at(kt, ks, grid), atol=0.01)
    np.testing.assert_allclose(surv, np.exp(-HAZARD * grid), atol=0.02)


def test_gradient_ignores_bins_after_censoring():
    logits = torch.zeros(1, 12, requires_grad=True)
    discrete_time_nll(logits, torch.tensor([5]), torch.tensor([0])).backward()
    grad = logits.grad[0]
    assert torch.all(grad[6:] == 0)
    assert torch.all(grad[:6] != 0)
    # an event in bin 5: bins 0..4 survived, bin 5 failed, nothing after
    logits.grad = None
    discrete_time_nll(logits, torch.tensor([5]), torch.tensor([1])).backward()
    assert torch.all(logits.grad[0, 6:] == 0)
    assert float(logits.grad[0, 5]) == pytest.approx(-0.5)  # d/dl of -log sigmoid(l) at l = 0


def test_model_without_features_recovers_exponential_survival():
    visits, events = exponential_cohort(1500, HAZARD, censor_max_months=48.0, seed=1)
    cfg = SurvivalModelConfig(max_epochs=150, min_epochs=150, learning_rate=2e-2, val_fraction=0.0)
    model = train_model(visits, events, cfg, seed=0)
    curve = model.predict(visits.iloc[:1])
    months = events["time_days"].to_numpy() / DAYS_PER_MONTH
    kt, ks = kaplan_meier(months, events["event"].to_numpy())
    for m in (6, 12, 24):
        s = float(curve[f"s_{m}m"].iloc[0])
        assert s == pytest.approx(np.exp(-HAZARD * m), abs=0.04)
        assert s == pytest.approx(float(step_at(kt, ks, np.array([m]))[0]), abs=0.03)


def test_ranking_term_known_value():
    # row 0: event in bin 1; row 1: censored past the horizon (same visit index); row 2: other visit index
    logits = torch.tensor([[-2.0, 0.5, 0.0], [-1.0, -1.5, 0.0], [3.0, 3.0, 3.0]])
    bins, events, group = torch.tensor([1, 3, 3]), torch.tensor([1, 0, 0]), torch.tensor([0, 0, 1])
    sigma = 0.1
    cif = 1 - torch.cumprod(1 - torch.sigmoid(logits), dim=-1)
    expected = torch.exp(-(cif[0, 1] - cif[1, 1]) / sigma)  # only the pair (0, 1) is comparable
    assert float(ranking_loss(logits, bins, events, group, sigma)) == pytest.approx(float(expected), rel=1e-6)
    # a patient who fails first but is scored as less at risk is penalised more
    swapped = logits[[1, 0, 2]]
    assert float(ranking_loss(swapped, bins, events, group, sigma)) > float(expected)
