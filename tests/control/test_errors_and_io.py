"""Bad input gets a clear error; checkpoints round-trip and refuse another problem."""

import math

import pytest
import torch

from odeflow.control import (
    HJB,
    LQR,
    ControlProblem,
    GaussianOT,
    LossWeights,
    ValueNetwork,
    control_loss,
    fit,
    load_checkpoint,
    make_problem,
    save_checkpoint,
    solve_characteristics,
    stochastic_loss,
)


def test_dimension_mismatch():
    with pytest.raises(ValueError, match=r"dimension mismatch.*dim=3.*dim=2"):
        control_loss(LQR(dim=3), ValueNetwork(2).double(), torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        solve_characteristics(LQR(dim=3), ValueNetwork(3).double(), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="in_features=5"):
        from odeflow.flows import build_potential

        ValueNetwork(3, net=build_potential(4, 8))


def test_non_finite_samples_and_costs():
    pb, phi = LQR(dim=2), ValueNetwork(2, width=8).double()
    x = torch.zeros(3, 2, dtype=torch.float64)
    x[1, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        control_loss(pb, phi, x)

    class Bad(LQR):
        def terminal_cost(self, x, log_rho=None):
            return torch.full((x.shape[0],), math.inf, dtype=x.dtype)

    with pytest.raises(FloatingPointError, match="terminal"):
        control_loss(Bad(dim=2), phi, torch.zeros(3, 2, dtype=torch.float64))

    class BadSampler(LQR):
        def sample_initial(self, n, **kw):
            return torch.full((n, 2), math.nan, dtype=torch.float64)

    with pytest.raises(ValueError, match="sample_initial returned NaN"):
        fit(BadSampler(dim=2), phi, iterations=1, batch=4, verbose=False)


@pytest.mark.parametrize("T", [0.0, -1.0, math.inf, "soon"])
def test_bad_horizon(T):
    with pytest.raises(ValueError, match="horizon"):
        LQR(dim=2, horizon=T)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown control problem 'lqg'.*'hjb'.*'lqr'"):
        make_problem("lqg")


def test_diffusion_to_deterministic_solver_and_back():
    phi = ValueNetwork(2, width=8).double()
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"has a diffusion.*deterministic"):
        control_loss(LQR(dim=2, sigma=0.3), phi, x)
    with pytest.raises(ValueError, match=r"has a diffusion.*deterministic"):
        fit(LQR(dim=2, sigma=0.3), phi, solver="deterministic", iterations=1, verbose=False)
    with pytest.raises(ValueError, match="has no diffusion"):
        stochastic_loss(LQR(dim=2), phi, x)
    with pytest.raises(ValueError, match="diffusion must be a number or a tensor"):
        LQR(dim=2, sigma=torch.ones(3, 2))


def test_other_bad_arguments():
    pb, phi = LQR(dim=2), ValueNetwork(2, width=8).double()
    with pytest.raises(ValueError, match=r"LossWeights\.hjb"):
        LossWeights(hjb=-1.0)
    with pytest.raises(ValueError, match="nt must be"):
        control_loss(pb, phi, torch.zeros(2, 2, dtype=torch.float64), nt=0)
    with pytest.raises(ValueError, match="optimizer"):
        fit(pb, phi, optimizer="sgd", verbose=False)
    with pytest.raises(ValueError, match="solver"):
        fit(pb, phi, solver="magic", iterations=1, verbose=False)
    with pytest.raises(TypeError, match="ControlProblem"):
        control_loss(object(), phi, torch.zeros(2, 2))
    with pytest.raises(NotImplementedError, match="dynamics"):
        ControlProblem(dim=2).dynamics(None, None, None)


def test_inputs_not_modified():
    pb, phi = GaussianOT(dim=2), ValueNetwork(2, width=8).double()
    x = pb.sample_initial(5)
    x0 = x.clone()
    control_loss(pb, phi, x, nt=2)
    assert torch.equal(x, x0)


def test_checkpoint_round_trip_and_wrong_problem(tmp_path):
    torch.manual_seed(0)
    pb, phi = LQR(dim=2, gamma=2.0), ValueNetwork(2, width=8).double()
    res = fit(pb, phi, iterations=2, batch=8, verbose=False, checkpoint=tmp_path / "model.pt")
    assert res.checkpoint.is_file()
    pb2, phi2 = load_checkpoint(tmp_path / "model.pt")
    assert isinstance(pb2, LQR) and pb2.gamma == 2.0
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(phi2(x, 0.3), phi(x, 0.3), rtol=0, atol=0)
    _, phi3 = load_checkpoint(tmp_path / "model.pt", pb)
    torch.testing.assert_close(phi3(x, 0.3), phi(x, 0.3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="another problem"):
        load_checkpoint(tmp_path / "model.pt", LQR(dim=2, gamma=3.0))
    with pytest.raises(ValueError, match="another problem"):
        load_checkpoint(tmp_path / "model.pt", HJB(dim=2))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint(pb, phi, tmp_path / "sub" / "m.pt")
    assert (tmp_path / "sub" / "m.pt").is_file()


def test_generic_feedback_matches_closed_form():
    """The base class's Newton inner solve gives the closed-form u* = −R⁻¹Bᵀp and H."""
    pb = LQR(dim=3, A=0.2, control_weight=2.0)

    class Generic(ControlProblem):
        def dynamics(self, x, u, t):
            return pb.dynamics(x, u, t)

        def running_cost(self, x, u, t):
            return pb.running_cost(x, u, t)

    g = Generic(dim=3)
    x = torch.randn(5, 3, dtype=torch.float64)
    p = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.1, dtype=torch.float64)
    torch.testing.assert_close(g.feedback(x, p, t), pb.feedback(x, p, t))
    torch.testing.assert_close(g.hamiltonian(x, p, t), pb.hamiltonian(x, p, t))


def test_density_problem_without_log_det_rate():
    class Generic(ControlProblem):
        uses_density = True

        def dynamics(self, x, u, t):
            return u

        def running_cost(self, x, u, t):
            return 0.5 * (u * u).sum(-1)

        def terminal_cost(self, x, log_rho=None):
            return log_rho

        def initial_log_density(self, x):
            return -0.5 * (x * x).sum(-1)

    with pytest.raises(NotImplementedError, match="log_det_rate"):
        solve_characteristics(Generic(dim=2), ValueNetwork(2, width=4).double(),
                              torch.zeros(2, 2, dtype=torch.float64))  # fmt: skip
