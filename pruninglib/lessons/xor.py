r"""The XOR test of Hassibi & Stork 1993: a 2-2-1 sigmoid network with nine weights.

Hassibi & Stork 1993 (abstract and Sec. 4): "Of OBS, Optimal Brain Damage, and magnitude-based
methods, only OBS deletes the correct weights from a trained XOR network in every case."
This module makes that test repeatable over many random restarts, all of them vectorised
(``torch.func.vmap``), so hundreds of networks train in a few seconds:

* the network :math:`o = \sigma(v^\top \sigma(U x + a) + c)` with
  :math:`\theta = (u_{11}, u_{12}, u_{21}, u_{22}, a_1, a_2, v_1, v_2, c)`, see :data:`XOR_NAMES`;
* the error :math:`E(\theta) = \frac12\sum_{n=1}^4 (o_n - t_n)^2 + \frac{\lambda}{2}\lVert\theta\rVert^2`
  (sum-squared error as in the paper; a small weight decay :math:`\lambda` makes the minimum
  strict, so :math:`H` is invertible -- with :math:`\lambda = 0` the error only tends to 0 as the
  weights grow without bound);
* :func:`minimize_batched`: damped Newton (Levenberg-Marquardt) on many independent problems at
  once, optionally with some weights clamped at 0;
* :func:`xor_pruning_trial`: for each trained network, the weight that magnitude, OBD and OBS
  would delete first, and the weight whose deletion *in fact* hurts least: the one with the
  lowest error after clamping it to 0 and retraining the other eight weights to a minimum;
* :func:`xor_miss_diagnostics` and :func:`example_network`: why the methods miss, and one network
  to look at (lesson 01).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad, hessian, vmap

from pruninglib.criteria.obd import magnitude_saliency, obd_saliency
from pruninglib.criteria.obs import obs_saliency
from pruninglib.curvature.params import quiet_jit_deprecation

__all__ = ["XOR_X", "XOR_T", "XOR_NAMES", "xor_forward", "xor_error", "minimize_batched",
           "train_xor", "XorTrial", "xor_pruning_trial", "obs_deleted", "xor_miss_diagnostics", "example_network"]

XOR_X = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]], dtype=torch.float64)
XOR_T = torch.tensor([0., 1., 1., 0.], dtype=torch.float64)
XOR_NAMES = ("u11", "u12", "u21", "u22", "a1", "a2", "v1", "v2", "c")


def xor_forward(theta: torch.Tensor, x: torch.Tensor = XOR_X) -> torch.Tensor:
    """Outputs of the 2-2-1 sigmoid network for parameters ``theta`` (``[..., 9]``): ``[..., len(x)]``.

    Used in lesson 01.
    """
    if theta.shape[-1] != 9:
        raise ValueError(f"theta must end in 9 entries {XOR_NAMES}, got shape {tuple(theta.shape)}")
    U = theta[..., :4].reshape(*theta.shape[:-1], 2, 2)
    a, v, c = theta[..., 4:6], theta[..., 6:8], theta[..., 8]
    h = torch.sigmoid(torch.einsum("...ij,nj->...ni", U, x.to(theta.dtype)) + a.unsqueeze(-2))
    return torch.sigmoid((h * v.unsqueeze(-2)).sum(-1) + c.unsqueeze(-1))


def xor_error(theta: torch.Tensor, weight_decay: float = 0.0) -> torch.Tensor:
    r""":math:`E = \frac12\sum_n (o_n - t_n)^2 + \frac{\lambda}{2}\lVert\theta\rVert^2` (``[...]``).

    Used in lesson 01.
    """
    o = xor_forward(theta)
    return 0.5 * (o - XOR_T.to(o.dtype)).pow(2).sum(-1) + 0.5 * weight_decay * theta.pow(2).sum(-1)


def minimize_batched(theta: torch.Tensor, weight_decay: float = 0.0, fixed: torch.Tensor | None = None,
                     iters: int = 300, tol: float = 1e-10) -> torch.Tensor:
    r"""Minimise :func:`xor_error` for every row of ``theta`` (``[B, 9]``) independently.

    Damped Newton with a trust parameter per problem (Levenberg-Marquardt): the step solves
    :math:`(H + \mu I)\,s = -g` with :math:`\mu` raised above :math:`-\lambda_{\min}(H)` where
    :math:`H` is indefinite, doubled after a rejected step and divided by three after an accepted
    one. Gradients and Hessians come from ``vmap(grad)`` / ``vmap(hessian)``. Each problem stops
    when its free gradient entries are all below ``tol`` (only unfinished problems are computed).

    Args:
        theta: starting points ``[B, 9]``.
        weight_decay: :math:`\lambda` of the error.
        fixed: boolean ``[B, 9]``: entries held at their starting value (deleted weights).
        iters: the most Newton iterations per problem.
        tol: convergence threshold on the max-norm of the free gradient.

    Returns:
        the minimisers ``[B, 9]``.

    Used in lesson 01.
    """
    theta = theta.clone().to(torch.float64)
    B, P = theta.shape
    free_all = torch.ones_like(theta, dtype=torch.bool) if fixed is None else ~fixed
    f = lambda t: xor_error(t, weight_decay)  # noqa: E731
    mu_all = torch.full((B,), 1e-2, dtype=theta.dtype)
    E_all = f(theta)
    eye = torch.eye(P, dtype=theta.dtype)
    active = torch.arange(B)
    for _ in range(iters):
        th, free, mu, E = theta[active], free_all[active], mu_all[active], E_all[active]
        g = vmap(grad(f))(th) * free
        done = g.abs().amax(-1) < tol
        if bool(done.all()):
            break
        keep = ~done
        active, th, free, mu, E, g = active[keep], th[keep], free[keep], mu[keep], E[keep], g[keep]
        n = len(active)
        with quiet_jit_deprecation():
            H = vmap(hessian(f))(th)
        Fm = free.unsqueeze(-1) & free.unsqueeze(-2)
        H = torch.where(Fm, H, eye.expand(n, P, P))
        lam_min = torch.linalg.eigvalsh(H)[:, 0]
        shift = torch.clamp(-lam_min, min=0) * 1.01 + mu
        step = -torch.linalg.solve(H + shift[:, None, None] * eye, g.unsqueeze(-1)).squeeze(-1) * free
        E_new = f(th + step)
        ok = E_new <= E
        theta[active] = torch.where(ok.unsqueeze(-1), th + step, th)
        E_all[active] = torch.where(ok, E_new, E)
        mu_all[active] = torch.where(ok, mu / 3, mu * 2).clamp(1e-12, 1e8)
    return theta


def train_xor(n_restarts: int, seed: int = 0, weight_decay: float = 1e-3, init_scale: float = 2.0,
              iters: int = 500) -> torch.Tensor:
    """Train ``n_restarts`` XOR networks from independent random starts (``[R, 9]``). Used in lesson 01."""
    if n_restarts < 1:
        raise ValueError(f"n_restarts must be >= 1, got {n_restarts}")
    g = torch.Generator().manual_seed(seed)
    theta0 = init_scale * torch.randn(n_restarts, 9, generator=g, dtype=torch.float64)
    return minimize_batched(theta0, weight_decay, iters=iters)


@dataclass
class XorTrial:
    """Per trained network (rows): what each method deletes and what is in fact best.

    Attributes:
        theta: the trained weights ``[R, 9]``.
        solved: the network classifies all four patterns correctly (``|o - t| < 0.5``).
        error: :math:`E` at the minimum.
        choice: ``{"magnitude" | "OBD" | "OBS": [R] index of the weight deleted first}``.
        retrained_error: ``[R, 9]`` error after deleting weight ``q`` and retraining the rest.
        retrained_theta: ``[R, 9, 9]`` those retrained networks (``[r, q]`` has entry ``q`` at 0).
        zeroed_error: ``[R, 9]`` error after deleting weight ``q`` alone (no retraining).
        best: ``[R]`` the weight of least ``retrained_error`` (the "correct" weight).
        best_no_retrain: ``[R]`` the weight of least ``zeroed_error``.
        saliency: ``{method: [R, 9]}`` the scores behind ``choice``.
        updated_error: ``[R, 9]`` error after OBS deletes weight ``q`` *with its Eq. 5 correction*
            of the other eight weights (no retraining): OBS's own no-retraining reference.
        still_solves: ``{method: [R]}`` the network still classifies all four patterns after
            the method deleted its weight its own way (OBS with its update; magnitude and OBD
            with the weight zeroed): the paper's criterion (Hassibi & Stork 1993, Sec. 4).

    Used in lesson 01.
    """

    theta: torch.Tensor
    solved: torch.Tensor
    error: torch.Tensor
    choice: dict[str, torch.Tensor]
    retrained_error: torch.Tensor
    retrained_theta: torch.Tensor
    zeroed_error: torch.Tensor
    best: torch.Tensor
    best_no_retrain: torch.Tensor
    saliency: dict[str, torch.Tensor]
    updated_error: torch.Tensor | None = None
    still_solves: dict[str, torch.Tensor] | None = None

    def correct(self, method: str, retrained: bool = True, tie_tol: float = 1e-6) -> torch.Tensor:
        """``[R]`` bool: ``method``'s weight is the best one, or within ``tie_tol`` of it in error
        (symmetric networks have exact ties, e.g. the two hidden biases). This is stricter than the
        paper's criterion (:meth:`fraction_still_solving`): "best" is the weight whose deletion costs
        least after retraining the other eight (``retrained=True``) or without retraining
        (``retrained=False``: the error after zeroing it, or for OBS after zeroing it *and* applying
        OBS's update, which is how OBS deletes a weight)."""
        if retrained:
            err = self.retrained_error
        else:
            err = self.updated_error if method == "OBS" and self.updated_error is not None else self.zeroed_error
        chosen = err.gather(1, self.choice[method].unsqueeze(1)).squeeze(1)
        return chosen <= err.min(1).values + tie_tol

    def fraction_still_solving(self, method: str, only_solved: bool = True) -> float:
        """The paper's criterion (Hassibi & Stork 1993, Sec. 4): the fraction of networks that still
        classify all four XOR patterns after ``method`` deleted its first weight, OBS with its Eq. 5
        update, magnitude and OBD with the weight zeroed, no retraining. Used in lesson 01."""
        if self.still_solves is None:
            raise ValueError("this XorTrial was built without still_solves; use xor_pruning_trial")
        hit = self.still_solves[method]
        if only_solved:
            hit = hit[self.solved]
        return float(hit.double().mean()) if len(hit) else float("nan")

    def fraction_correct(self, method: str, only_solved: bool = True, retrained: bool = True,
                         tie_tol: float = 1e-6) -> float:
        """Fraction of networks where ``method`` deletes the correct weight (see :meth:`correct`)."""
        hit = self.correct(method, retrained, tie_tol)
        if only_solved:
            hit = hit[self.solved]
        return float(hit.double().mean()) if len(hit) else float("nan")


def xor_pruning_trial(theta: torch.Tensor, weight_decay: float = 1e-3, steps: int = 8,
                      iters: int = 300, stage_iters: int = 25) -> XorTrial:
    r"""Which weight do magnitude, OBD (:math:`\frac12 h_{qq}\theta_q^2`) and OBS
    (:math:`\frac12\theta_q^2/[H^{-1}]_{qq}`) delete first, against the weight whose deletion
    (followed by retraining the other eight weights to a minimum) raises :math:`E` least.

    "In fact" is measured by continuation: weight :math:`q` is moved to 0 in ``steps`` equal
    stages and the other eight weights are retrained (:func:`minimize_batched`) after each stage, so the network follows its own valley instead of jumping to
    another minimum of the error surface.

    Args:
        theta: trained networks ``[R, 9]`` (at minima of :func:`xor_error` with this ``weight_decay``).
        weight_decay: :math:`\lambda` of the error.
        steps: continuation stages.
        iters: the most Newton iterations of the last stage (each network stops when converged).
        stage_iters: Newton iterations of each earlier stage.

    Used in lesson 01.
    """
    R = theta.shape[0]
    f = lambda t: xor_error(t, weight_decay)  # noqa: E731
    with quiet_jit_deprecation():
        H = vmap(hessian(f))(theta)
    H_inv = torch.linalg.inv(H)
    sal = {"magnitude": magnitude_saliency(theta),
           "OBD": vmap(obd_saliency)(theta, H),
           "OBS": vmap(obs_saliency)(theta, H_inv)}
    choice = {k: v.argmin(-1) for k, v in sal.items()}
    # every (network, weight) pair: move the weight to 0 in `steps` stages, retraining the
    # other eight at each stage (continuation), so each one follows its own local minimum
    starts = theta.repeat_interleave(9, 0)
    fixed = torch.eye(9, dtype=torch.bool).repeat(R, 1)
    zeroed = f(torch.where(fixed, torch.zeros_like(starts), starts)).view(R, 9)
    cur = starts
    for k in range(steps - 1, -1, -1):
        cur = torch.where(fixed, starts * (k / steps), cur)
        # intermediate stages only need to stay in the valley; the last one converges fully
        cur = minimize_batched(cur, weight_decay, fixed, iters=iters if k == 0 else stage_iters)
    retrained = f(cur).view(R, 9)
    solved = _solves(theta)
    updated = obs_deleted(theta, H_inv)                                   # [R, 9, 9]
    updated_error = f(updated.reshape(-1, 9)).view(R, 9)
    rows = torch.arange(R)
    after = {"magnitude": starts.view(R, 9, 9).clone(), "OBD": starts.view(R, 9, 9).clone(), "OBS": updated}
    for m in ("magnitude", "OBD"):
        after[m][:, range(9), range(9)] = 0.0                             # the weight zeroed, nothing else
    still = {m: _solves(after[m][rows, choice[m]]) for m in ("magnitude", "OBD", "OBS")}
    return XorTrial(theta, solved, f(theta), choice, retrained, cur.view(R, 9, 9), zeroed, retrained.argmin(-1),
                    zeroed.argmin(-1), sal, updated_error, still)


def _solves(theta: torch.Tensor) -> torch.Tensor:
    """``[...]`` bool: the networks classify all four XOR patterns (every ``|o - t| < 0.5``)."""
    return ((xor_forward(theta) - XOR_T).abs() < 0.5).all(-1)


def obs_deleted(theta: torch.Tensor, H_inv: torch.Tensor) -> torch.Tensor:
    r"""``[R, 9, 9]``: row ``[r, q]`` is network ``r`` after OBS deleted weight ``q`` and corrected the
    other eight, :math:`\theta + \delta\theta` with :math:`\delta\theta = -\frac{\theta_q}{[H^{-1}]_{qq}} H^{-1} e_q`
    (Hassibi & Stork 1993, Eq. 5), and entry ``q`` set to exactly 0. Used in lesson 01.

    Args:
        theta: trained networks ``[R, 9]``.
        H_inv: their inverse Hessians ``[R, 9, 9]``.
    """
    d = torch.diagonal(H_inv, dim1=1, dim2=2)                            # [R, 9]
    # delta[r, q, :] = -theta[r, q] / H_inv[r, q, q] * H_inv[r, :, q]
    delta = -(theta / d).unsqueeze(-1) * H_inv.transpose(1, 2)
    out = theta.unsqueeze(1) + delta
    out[:, range(9), range(9)] = 0.0
    return out


def xor_miss_diagnostics(trial: XorTrial, weight_decay: float = 1e-3) -> dict[str, float | int | None]:
    r"""Why the methods miss on the solved networks of ``trial``. Used in lesson 01.

    Returns:
        ``"offdiag_share"``: median over the solved networks of
        :math:`\lVert H - \mathrm{diag}(H)\rVert_F / \lVert H\rVert_F` (what OBD ignores);
        ``"magnitude_bias_first"``: fraction of them where magnitude deletes a bias (a1, a2, c) first;
        ``"obs_misses"``: how many OBS gets wrong; where it does, ``"obs_miss_ratio"``: the median
        of OBS's predicted cost of the correct weight over its actual retrained cost, and
        ``"obs_miss_size"``: the median :math:`|\theta|` of that weight (both ``None`` without misses);
        ``"median_abs_weight"``: the median :math:`|\theta|` of all weights of the solved networks.
    """
    with quiet_jit_deprecation():
        Hx = vmap(hessian(lambda t: xor_error(t, weight_decay)))(trial.theta[trial.solved])
    offdiag = float(((Hx - torch.diag_embed(torch.diagonal(Hx, dim1=1, dim2=2))).norm(dim=(1, 2))
                     / Hx.norm(dim=(1, 2))).median())
    mag_bias = float(torch.isin(trial.choice["magnitude"][trial.solved], torch.tensor([4, 5, 8])).double().mean())
    miss = trial.solved & ~trial.correct("OBS")
    ratio = size = None
    if miss.any():
        rows = torch.nonzero(miss).flatten()
        b = trial.best[rows]
        pred_b = trial.saliency["OBS"][rows, b]
        act_b = trial.retrained_error[rows, b] - trial.error[rows]
        ratio = float((pred_b / act_b).median())
        size = float(trial.theta[rows, b].abs().median())
    return {"offdiag_share": offdiag, "magnitude_bias_first": mag_bias, "obs_misses": int(miss.sum()),
            "obs_miss_ratio": ratio, "obs_miss_size": size,
            "median_abs_weight": float(trial.theta[trial.solved].abs().median())}


def example_network(trial: XorTrial) -> int:
    """One network of ``trial`` to look at: the first solved one where OBD is wrong and OBS right,
    else the first where OBD is wrong, else the first solved one (else network 0). Used in lesson 01."""
    for pick in (trial.solved & ~trial.correct("OBD") & trial.correct("OBS"), trial.solved & ~trial.correct("OBD"),
                 trial.solved):
        if pick.any():
            return int(torch.nonzero(pick).flatten()[0])
    return 0
