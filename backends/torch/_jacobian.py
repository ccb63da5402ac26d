"""Jacobians of residual vectors on torch, for least-squares methods
(:class:`kinabs.LevenbergMarquardt`).

The starts of a batch are independent (the Rosenbrock solver gives each member its own
step size), so a Jacobian is taken by *expanding the batch*: each start is repeated once
per direction and every copy carries one direction, so that one batched evaluation
gives every row (or column) of every start's Jacobian.

* :func:`forward_jacobian` (``jacobian="forward"``): each start repeated once per
  parameter, copy ``k`` a dual number (``torch.autograd.forward_ad``) with tangent
  ``e_k``; one solve of ``B * n`` members gives every column. Autograd stays off, so the
  solve takes the plain Rosenbrock path (``rosenbrock_solve``, not the custom-autograd
  adjoint or checkpoint solves, which do not carry tangents).
* :func:`reverse_jacobian` (``jacobian="reverse"``): each start repeated once per
  residual, copy ``i`` seeds residual ``i``; one solve of ``B * m`` members with its
  gradient (the solve's discrete adjoint or checkpoints) and one backward pass give every
  row.

Both split the directions into blocks of at most :data:`MAX_ROWS` members. Where the
residuals come from a function of one start (a custom :class:`kinabs.ResidualLoss`,
whose ``model`` simulates one start), the batch cannot be expanded:
:func:`forward_jacobian_rows` evaluates each start once per parameter (dual numbers),
:func:`reverse_jacobian_rows` once with one backward pass per residual.

Measured on the serine example (10 parameters, 20 residuals, default loss, RODAS5; the
starts of ``benchmarks/serine_starts.csv`` repeated to fill the batch; torch 2.13 on CPU,
2 threads, on a shared machine with a load of about 2.5; minimum of 3 to 5 runs): time
per Jacobian of the whole batch at the starts, with one gradient of the loss
(``value_and_grad``) for scale::

    starts  one gradient  reverse, one backward  reverse, expanded  forward, expanded
                          pass per residual (a)  batch (B * m)      batch (B * n)
      5       0.049 s          0.25 s               0.072 s            0.13 s
     20       0.065 s            -                  0.16 s             0.16 s
    100       0.079 s            -                  0.93 s             0.28 s

Forward mode one tangent at a time (10 solves) took 1.26 s for 5 starts. At the trial
points of a Levenberg-Marquardt fit (harder solves) of the 5 starts: 0.15 s (reverse)
against 0.26 s (forward) per Jacobian, and 100 iterations of the whole fit took 41 s in
reverse mode, 55 s in forward mode, with the same final losses. All agree with central
finite differences (step 1e-5) to 2.2e-8 of the largest entry (the differences' own
error) and with each other to 1e-14.

An eager torch solve costs per operation, hardly per member, so an expanded batch costs
little more than one gradient; one backward pass per residual (a) repeats the adjoint's
per-step overhead m times. Forward mode costs about twice reverse mode at the same batch
size (each operation on a dual tensor is two), so with few starts reverse mode is faster
even where the parameters are fewer than the residuals, and forward mode wins as the
batch grows (B * m members against B * n). Both are offered: ``LevenbergMarquardt
.jacobian`` chooses, ``"auto"`` as on JAX (forward where the parameters are at most the
residuals); ``jacobian="reverse"`` is the faster choice for a few starts of a small
model.

Since then, small CPU solves run in numpy (``_solvers.host``: float64, autonomous systems
with step functions, serine among them), the plain ones and those with a discrete
adjoint, and the host adjoint solves each distinct member of an expanded batch once,
taking its copies' adjoints together in one backward pass (a seed axis). Forward mode's
dual tensors stay in torch. Measured again on serine (same starts, each jittered by 0.05
in log2 so that no two coincide; CPU time, median of 3, on the shared machine at a load
of about 10 on 2 cores)::

    starts  reverse, expanded batch (host)  forward, expanded batch (torch)
      5             0.038 s                         0.195 s
     20             0.050 s                         0.237 s
    100             0.316 s                         0.421 s
    250             0.80 s                          4.1 s

so the training program's ``"auto"`` takes reverse mode whatever the number of starts
where the host path applies (``_train``), forward mode from 20 starts elsewhere. Near the
optimum (about 200 Rosenbrock steps per solve) one Jacobian of 5 starts took 0.16 s CPU
against 0.47 s in torch, one solve of the residuals alone 0.063 s against 0.22 s; the
whole 100-iteration fit (process start to results) 24 s CPU against 65 s. Exceptions: torchdiffeq's solvers (``SolverOptions(method="nonstiff")``) have no
forward mode (custom autograd Functions without ``jvp``), so they always take reverse
mode; a custom residual loss (one start at a time: 10 solves per start in forward mode,
one solve and a backward pass per residual in reverse mode; measured with 9 residuals,
1.06 s against 0.33 s per start) takes reverse mode under ``"auto"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwad

__all__ = ["MAX_ROWS", "forward_jacobian", "reverse_jacobian", "forward_jacobian_rows",
           "reverse_jacobian_rows"]

#: The most members one expanded evaluation solves together (blocks of directions beyond).
MAX_ROWS = 4096

#: ``fn(theta (K, n)) -> (r (K, m), status (K,) numpy)``
Batched = Callable[[torch.Tensor], tuple[torch.Tensor, np.ndarray]]
#: ``fn(theta (n,)) -> (r (m,), status int)``
Single = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def _blocks(count: int, batch: int) -> list[range]:
    size = max(1, min(count, MAX_ROWS // max(batch, 1)))
    return [range(s, min(count, s + size)) for s in range(0, count, size)]


def forward_jacobian(fn: Batched, theta: torch.Tensor):
    """Residuals (B, m), solve status (B,) and Jacobian (B, m, n) of ``fn`` at ``theta``
    (B, n), by forward mode on an expanded batch (see the module)."""
    b, n = theta.shape
    theta = theta.detach()
    r = status = None
    cols: list[torch.Tensor] = []
    for block in _blocks(n, b):
        k = len(block)
        te = theta.repeat_interleave(k, 0)
        tangent = torch.zeros_like(te)
        which = torch.as_tensor(list(block), device=te.device).repeat(b)
        tangent[torch.arange(b * k, device=te.device), which] = 1.0
        with torch.no_grad(), fwad.dual_level():
            out, st = fn(fwad.make_dual(te, tangent))
            primal, tan = fwad.unpack_dual(out)
        m = primal.shape[-1]
        if tan is None:  # the residuals do not depend on theta
            tan = torch.zeros_like(primal)
        cols.append(tan.reshape(b, k, m).transpose(1, 2))
        if r is None:
            r = primal.reshape(b, k, m)[:, 0].clone()
            status = np.asarray(st, dtype=np.int64).reshape(b, k).max(axis=1)
    return r, status, torch.cat(cols, dim=2)


def reverse_jacobian(fn: Batched, theta: torch.Tensor, m: int):
    """Residuals (B, m), solve status (B,) and Jacobian (B, m, n) of ``fn`` at ``theta``
    (B, n), by reverse mode on an expanded batch (see the module); ``m``: the length of
    the residual vector."""
    b, n = theta.shape
    r = status = None
    rows: list[torch.Tensor] = []
    for block in _blocks(m, b):
        k = len(block)
        te = theta.detach().repeat_interleave(k, 0).requires_grad_(True)
        with torch.enable_grad():
            out, st = fn(te)
            if out.shape[-1] != m:
                raise ValueError(f"the residual vector has {out.shape[-1]} entries, not {m}")
            seeds = torch.zeros_like(out)
            which = torch.as_tensor(list(block), device=te.device).repeat(b)
            seeds[torch.arange(b * k, device=te.device), which] = 1.0
            # a non-finite residual (a failed solve) must not reach the backward pass
            picked = torch.where(torch.isfinite(out), out, torch.zeros_like(out)) * seeds
            total = picked.sum()
            if total.requires_grad:
                (grad,) = torch.autograd.grad(total, te, allow_unused=True)
            else:
                grad = None
        if grad is None:
            grad = torch.zeros_like(te)
        rows.append(grad.reshape(b, k, n))
        if r is None:
            r = out.detach().reshape(b, k, m)[:, 0].clone()
            status = np.asarray(st, dtype=np.int64).reshape(b, k).max(axis=1)
    return r, status, torch.cat(rows, dim=1)


def forward_jacobian_rows(fn: Single, theta: torch.Tensor):
    """:func:`forward_jacobian` for a function of one start: each start evaluated once per
    parameter (dual numbers, one tangent each)."""
    rs, statuses, jacs = [], [], []
    n = theta.shape[1]
    for row in theta.detach():
        cols, r, status = [], None, 0
        for k in range(n):
            tangent = torch.zeros_like(row)
            tangent[k] = 1.0
            with torch.no_grad(), fwad.dual_level():
                out, st = fn(fwad.make_dual(row, tangent))
                primal, tan = fwad.unpack_dual(out)
            cols.append(torch.zeros_like(primal) if tan is None else tan)
            status = max(status, int(st))
            if r is None:
                r = primal.clone()
        rs.append(r)
        statuses.append(status)
        jacs.append(torch.stack(cols, dim=1))
    return _stack(rs), np.asarray(statuses, dtype=np.int64), _stack(jacs)


def reverse_jacobian_rows(fn: Single, theta: torch.Tensor):
    """:func:`reverse_jacobian` for a function of one start: each start evaluated once,
    with one backward pass per residual."""
    rs, statuses, jacs = [], [], []
    for row in theta.detach():
        x = row.clone().requires_grad_(True)
        with torch.enable_grad():
            out, st = fn(x)
            grads = []
            for i in range(out.shape[0]):
                g = None
                if out.requires_grad and bool(torch.isfinite(out[i])):
                    (g,) = torch.autograd.grad(out[i], x, retain_graph=True,
                                               allow_unused=True)
                elif not bool(torch.isfinite(out[i])):
                    g = torch.full_like(x, float("nan"))
                grads.append(torch.zeros_like(x) if g is None else g)
        rs.append(out.detach())
        statuses.append(int(st))
        jacs.append(torch.stack(grads) if grads else x.new_zeros((0, x.shape[0])))
    return _stack(rs), np.asarray(statuses, dtype=np.int64), _stack(jacs)


def _stack(parts: list[Any]) -> torch.Tensor:
    """Rows of one length stacked; rows of different lengths (a custom loss whose residual
    vector changes length between starts) are an error."""
    sizes = {tuple(p.shape) for p in parts}
    if len(sizes) > 1:
        raise ValueError(f"the residual vectors of the starts differ in shape: {sorted(sizes)}")
    return torch.stack(parts)
