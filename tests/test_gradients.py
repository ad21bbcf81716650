"""Which results carry a gradient, and that the ones computed by a solver do not.

A result computed by bisection or by an ODE solver has an autograd graph through its bracket
or its last step only, so ``backward()`` on it ran and returned a wrong gradient, silently.
An audit (``torch.autograd.gradcheck`` on every public function, at the test suite's recorded
calls and at generic inputs) found four such functions; their results are now detached, so a
reader who tries to differentiate them gets torch's "does not require grad" error instead.
The functions with a custom backward are gradchecked in their modules' tests.
"""

import pytest
import torch

from dlmath import diffusion as D
from dlmath import finetune as F
from dlmath import manifold as M
from dlmath import normalizers as N

F64 = torch.float64


def _w(p):
    w = torch.tensor([0.4, -0.9, 0.3, 0.2], dtype=F64)
    return w / torch.linalg.vector_norm(w, ord=p)


GMM = D.GaussianMixture([0.3, 0.7], [-2.0, 1.5], [0.3, 0.5])
SOLVED = {
    "entmax_bisect_threshold": lambda x: N.entmax_bisect_threshold(x, 1.3),
    "lp_sphere_direction": lambda x: M.lp_sphere_direction(_w(3.0), x, 3.0),
    "lp_sphere_direction (lambda)": lambda x: M.lp_sphere_direction(
        _w(1.5), x, 1.5, return_lambda=True)[1],
    "consistency_function_1d": lambda x: D.consistency_function_1d(GMM, x, 0.5),
    "average_velocity": lambda x: D.average_velocity(lambda y, t: -y * (1 + t), x, 0.1, 0.3),
    "flow_map": lambda x: D.flow_map(lambda y, t: -y * (1 + t), x, 0.1, 0.4),
    "class_inclusion_probabilities": lambda x: F.class_inclusion_probabilities(x.exp(), 2),
}


@pytest.mark.parametrize("name", sorted(SOLVED))
def test_solver_results_carry_no_gradient(name):
    x = torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=F64, requires_grad=True)
    out = SOLVED[name](x)
    assert torch.isfinite(out).all()
    assert not out.requires_grad


def test_consistency_function_derivative_is_the_density_ratio():
    """The formula its docstring gives instead: d f*/dx = p_t(x) / p_0(f*(x)), the derivative
    of the monotone map F_0^{-1} o F_t, against central differences (h = 1e-5: error ~h^2)."""
    t, h = 0.5, 1e-5
    x = torch.tensor([-3.0, -1.0, 0.2, 2.0, 4.0], dtype=F64)
    f = D.consistency_function_1d(GMM, x, t)
    fd = (D.consistency_function_1d(GMM, x + h, t) - D.consistency_function_1d(GMM, x - h, t))
    a, b = D.path_coefficients(t, data_at=0)
    ratio = (GMM.log_prob(x, a, b) - GMM.log_prob(f, 1.0, 0.0)).exp()
    torch.testing.assert_close(fd / (2 * h), ratio, rtol=1e-6, atol=0)
    assert float(ratio.max() / ratio.min()) > 1.5     # a slope that varies: not a shift
