"""The VectorField composes with torch: gradients with respect to parameters, initial
conditions and inputs (against finite differences and the symbolic Jacobian), torch.func
transforms of the vector field, torch.compile of the vector field, and what does not
work (torch.func through the adaptive solvers). docs/torch.md states these claims."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

import kinabs  # noqa: E402
from kinabs.backends.torch import VectorField  # noqa: E402

TIMES = torch.tensor([0.5, 2.0, 5.0], dtype=torch.float64)
SOLVER = kinabs.SolverOptions(method="stiff", rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def model():
    return kinabs.load_sbml(kinabs.example_model_path())


@pytest.fixture
def field(model):
    return VectorField(model, log_space=True)


def _central(f, x: torch.Tensor, h: float) -> torch.Tensor:
    """Central finite differences of a scalar function of a 1-d tensor."""
    out = torch.empty_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = h
        out[i] = (f(x + e) - f(x - e)) / (2 * h)
    return out


def _objective(field, y0=None):
    sol = field.solve(TIMES, y0=y0, solver=SOLVER)
    assert (sol.status == 0).all()
    return (sol.ys ** 2).sum()


def test_gradient_wrt_parameters(field):
    _objective(field).backward()
    grad = field.theta.grad.clone()
    theta = field.theta.detach().clone()

    def f(th):
        with torch.no_grad():
            field.theta.copy_(th)
            return _objective(field)

    fd = _central(f, theta, 1e-5)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7)


def test_gradient_wrt_initial_conditions(field):
    y0 = torch.tensor([0.6, 0.09], dtype=torch.float64, requires_grad=True)
    _objective(field, y0).backward()
    with torch.no_grad():
        fd = _central(lambda y: _objective(field, y), y0.detach(), 1e-6)
    torch.testing.assert_close(y0.grad, fd, rtol=1e-5, atol=1e-8)


def test_gradient_wrt_inputs(field):
    """Inputs: the state fed to forward (its Jacobian is the symbolic one) and a
    constant species that the model reads as an input (``p3g``, a fixed buffer)."""
    t = torch.tensor(0.0, dtype=torch.float64)
    y = torch.tensor([0.3, 0.2], dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda yy: field(t, yy), y)
    _, k = field.initial()
    symbolic = field.lowered.jac(t, y.detach()[None], k[None])[0]
    torch.testing.assert_close(jac, symbolic.detach(), rtol=1e-12, atol=1e-14)

    system = field.system
    fixed_names = [n for n in system.parameters if n not in field.trainable]
    i = fixed_names.index("p3g")
    fixed = field.fixed.detach().clone()
    field.fixed.requires_grad_(True)
    _objective(field).backward()
    grad = field.fixed.grad[i].item()

    def f(v):
        with torch.no_grad():
            field.fixed.copy_(fixed)
            field.fixed[i] = v
            return _objective(field).item()

    h = 1e-4 * fixed[i].item()
    fd = (f(fixed[i].item() + h) - f(fixed[i].item() - h)) / (2 * h)
    assert grad != 0 and grad == pytest.approx(fd, rel=1e-4)


def test_batched_field_gradients_are_per_member(model):
    """A (B, P) VectorField solves B models; member b's loss depends on row b only."""
    values = np.tile(kinabs.lower(model).parameter_vector(), (3, 1))
    values[1] *= 1.3
    field = VectorField(model, values)
    sol = field.solve(TIMES, solver=SOLVER)
    sol.ys[1].sum().backward()
    g = field.theta.grad
    assert torch.all(g[[0, 2]] == 0) and torch.any(g[1] != 0)


def test_torch_func_transforms_of_the_vector_field(field):
    t = torch.tensor(0.0, dtype=torch.float64)
    y = torch.tensor([0.6, 0.09], dtype=torch.float64)
    jr = torch.func.jacrev(lambda yy: field(t, yy))(y)
    jf = torch.func.jacfwd(lambda yy: field(t, yy))(y)
    torch.testing.assert_close(jr, jf, rtol=1e-12, atol=1e-15)
    ys = torch.rand(7, 2, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(lambda yy: field(t, yy))(ys), field(t, ys))
    assert torch.func.hessian(lambda yy: field(t, yy).sum())(y).shape == (2, 2)
    params = {k: v.detach() for k, v in field.named_parameters()}
    buffers = dict(field.named_buffers())
    jp = torch.func.jacrev(
        lambda p: torch.func.functional_call(field, (p, buffers), (t, y)))(params)["theta"]
    field(t, y)[0].backward()
    torch.testing.assert_close(jp[0], field.theta.grad, rtol=1e-12, atol=1e-15)


def test_torch_func_through_the_solver_is_refused(field):
    """The adaptive solvers decide step sizes on the host (tensor -> numpy), which
    torch.func transforms cannot trace: use autograd (backward) through solve."""
    y0 = torch.tensor([0.6, 0.09], dtype=torch.float64)
    with pytest.raises(RuntimeError):
        torch.func.grad(lambda y: field.solve(TIMES, y0=y, solver=SOLVER).ys.sum())(y0)


def test_torch_compile_of_the_vector_field(field):
    """torch.compile (default inductor backend, fullgraph) of forward, and its gradient."""
    torch._dynamo.reset()
    compiled = torch.compile(field, fullgraph=True)
    t = torch.tensor(1.0, dtype=torch.float64)
    y = torch.tensor([[0.6, 0.09], [0.3, 0.2]], dtype=torch.float64, requires_grad=True)
    out = compiled(t, y)
    torch.testing.assert_close(out, field(t, y), rtol=1e-13, atol=1e-15)
    out.sum().backward()
    gy, gtheta = y.grad.clone(), field.theta.grad.clone()
    y.grad = None
    field.theta.grad = None
    field(t, y).sum().backward()
    torch.testing.assert_close(gy, y.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gtheta, field.theta.grad, rtol=1e-12, atol=1e-15)


def test_vector_field_in_a_torch_model_with_torch_optim(model):
    """The field as a submodule of a user's nn.Module, trained by torch.optim through a
    torchdiffeq solve: the loss goes down."""
    import torchdiffeq

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.field = VectorField(model, trainable=["PSP.kcatB"], log_space=True)
            self.gain = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, t, y):
            return self.gain * self.field(t, y)

    net = Scaled()
    y0 = torch.tensor([0.6, 0.09], dtype=torch.float64)
    target = torchdiffeq.odeint(lambda t, y: net.field(t, y), y0, TIMES).detach()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((torchdiffeq.odeint(net, y0, TIMES) - target) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
