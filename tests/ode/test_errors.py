"""Bad input at the public boundary gets a clear error (issue 3, §5)."""

from __future__ import annotations

import pytest
import torch

import odeflow


def f(t, y):
    return -y


T = torch.tensor([0.0, 1.0])
Y = torch.ones(3)


@pytest.mark.parametrize(
    "y0, t, exc, match",
    [
        (Y, torch.zeros(2, 2), ValueError, "t must be 1-D"),
        (Y, torch.tensor([0.0]), ValueError, "at least two points"),
        (
            Y,
            torch.tensor([0.0, 1.0, 1.0]),
            ValueError,
            "strictly increasing or strictly decreasing",
        ),
        (
            Y,
            torch.tensor([0.0, 2.0, 1.0]),
            ValueError,
            "strictly increasing or strictly decreasing",
        ),
        (Y, torch.tensor([0.0, float("nan")]), ValueError, "inf or NaN"),
        (Y, torch.tensor([0.0, float("inf")]), ValueError, "inf or NaN"),
        (Y, torch.tensor([0, 1]), TypeError, "t must be a real floating"),
        (torch.ones(3, dtype=torch.int64), T, TypeError, "real floating"),
        (torch.ones(3, dtype=torch.complex64), T, TypeError, "real floating"),
        (torch.tensor([1.0, float("nan")]), T, ValueError, "y0 contains inf or NaN"),
        ("abc", T, TypeError, "y0 must be a torch.Tensor"),
        ((torch.ones(2), torch.ones(2, dtype=torch.float64)), T, TypeError, "share one dtype"),
    ],
)
def test_bad_t_and_y0(y0, t, exc, match):
    with pytest.raises(exc, match=match):
        odeflow.odeint(f, y0, t)


def test_device_mismatch():
    meta_t = torch.tensor([0.0, 1.0], device="meta")
    with pytest.raises(ValueError, match="move them to one device"):
        odeflow.odeint(f, Y, meta_t)


@pytest.mark.parametrize(
    "func, exc, match",
    [
        (lambda t, y: torch.ones(4), ValueError, "returned shape \\(4,\\)"),
        (lambda t, y: y.double(), TypeError, "silently promote"),
        (lambda t, y: (y > 0).long(), TypeError, "real floating"),
        (lambda t, y: y.tolist(), TypeError, "expected a torch.Tensor"),
        (lambda t, y: (y,), TypeError, "expected a torch.Tensor"),
    ],
)
def test_bad_func_output(func, exc, match):
    with pytest.raises(exc, match=match):
        odeflow.odeint(func, Y, T)


def test_bad_func_structure_for_tuple_state():
    with pytest.raises(TypeError, match="tuple of 2"):
        odeflow.odeint(lambda t, y: y[0], (Y, Y), T)
    with pytest.raises(TypeError, match="keys"):
        odeflow.odeint(lambda t, y: {"b": y["a"]}, {"a": Y}, T)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid methods are: euler"):
        odeflow.odeint(f, Y, T, method="rk45")
    with pytest.raises(ValueError, match="valid: fp32, fp64, tf32, bf16, fp16"):
        odeflow.odeint(f, Y, T, precision="int8")
    with pytest.raises(ValueError, match="'adjoint', 'backprop'"):
        odeflow.odeint(f, Y, T, gradient="continuous")
    for bad in ("layer", "Stage", None, 2):
        with pytest.raises(ValueError, match=r"valid: 'step'.*'stage'"):
            odeflow.DiscreteAdjoint(recompute=bad)


def test_bad_steps_and_options():
    with pytest.raises(ValueError, match="positive int"):
        odeflow.odeint(f, Y, T, steps_per_interval=0)
    with pytest.raises(ValueError, match="not both"):
        odeflow.odeint(f, Y, T, steps_per_interval=2, step_size=0.1)
    with pytest.raises(ValueError, match="positive finite"):
        odeflow.odeint(f, Y, T, step_size=-1.0)
    with pytest.raises(TypeError, match="callable"):
        odeflow.odeint(3, Y, T)
    with pytest.raises(TypeError, match="AdjointScaler"):
        odeflow.odeint(f, Y, T, scaler=False)


def test_fp16_unsupported_falls_back_with_warning(monkeypatch):
    from odeflow.ode import _precision

    monkeypatch.setattr(_precision, "_autocast_ok", lambda dev, dt: False)
    with pytest.warns(RuntimeWarning, match="falling back"):
        ys = odeflow.odeint(f, Y, T, precision="fp16")
    assert ys.dtype == torch.float32


def test_inputs_not_modified():
    y0 = torch.ones(3)
    t = torch.tensor([0.0, 1.0])
    y0c, tc = y0.clone(), t.clone()
    ys = odeflow.odeint(f, y0, t)
    assert torch.equal(y0, y0c) and torch.equal(t, tc)
    assert ys[0].data_ptr() != y0.data_ptr()


def test_more_bad_options():
    with pytest.raises(ValueError, match="positive int"):
        odeflow.odeint(f, Y, T, steps_per_interval=True)
    with pytest.raises(ValueError, match="positive finite"):
        odeflow.odeint(f, Y, T, step_size=True)
    with pytest.raises(ValueError, match="RK steps"):  # 10^12 steps: a unit mistake
        odeflow.odeint(f, Y, T, step_size=1e-12)
    with pytest.raises(TypeError, match="output_dtype must be a floating"):
        odeflow.odeint(f, Y, T, output_dtype=torch.int64)
    with pytest.raises(TypeError, match="output_dtype must be a floating"):
        odeflow.odeint(f, Y, T, output_dtype="float64")
    with pytest.raises(ValueError, match="storage dtype must be a floating"):
        odeflow.ode.PrecisionPolicy("bad", storage=torch.int32)
    with pytest.raises(ValueError, match="must be finite"):
        odeflow.ode.ButcherTableau("nan", a=((),), b=(float("nan"),), c=(0.0,), order=1)
    with pytest.raises(ValueError, match="must be finite"):
        odeflow.ode.ButcherTableau("nan", a=((float("nan"),), (1.0,)), b=(0.5, 0.5),
                                   c=(0.0, 1.0), order=2)  # fmt: skip
    # numpy integers are integers
    np = pytest.importorskip("numpy")
    ys = odeflow.odeint(f, Y, T, steps_per_interval=np.int64(3))
    assert torch.equal(ys, odeflow.odeint(f, Y, T, steps_per_interval=3))


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_func_modifying_its_input_in_place(gradient):
    """The solver reuses y (the first stored state is y0's memory): an in-place change by func
    is refused instead of silently corrupting y0, the trajectory and the gradients."""
    lin = torch.nn.Linear(3, 3)
    relu = torch.nn.ReLU(inplace=True)
    y0 = torch.tensor([1.0, -2.0, 0.3], requires_grad=True)
    with pytest.raises(ValueError, match="modified its input y in place"):
        odeflow.odeint(lambda t, y: lin(relu(y)), y0 * 1.0, T, gradient=gradient,
                       params=list(lin.parameters()))  # fmt: skip


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_low_precision_t_is_used_in_the_state_precision(dt):
    """Steps and stage times are formed in the state's precision, not in t's 16 bits."""
    t16 = torch.tensor([0.0, 10.0], dtype=dt, requires_grad=True)
    ys = odeflow.odeint(lambda t, y: torch.ones_like(y), torch.zeros(1), t16,
                        steps_per_interval=3)  # fmt: skip
    assert ys[-1].item() == 10.0  # y' = 1 over [0, 10]: exactly 10 (fp16 h: 10.00195)
    (g,) = torch.autograd.grad(ys[-1].sum(), t16)  # the time gradient reaches t
    assert g.dtype == dt and g.tolist() == [-1.0, 1.0]


def test_dict_output_is_matched_by_key():
    """func may build its dict output in any key order; a missing or extra key is an error."""
    y0 = {"a": torch.ones(2), "b": torch.full((3,), 2.0)}

    def swapped(t, y):
        return {"b": -y["b"], "a": 2 * y["a"]}

    def ordered(t, y):
        return {"a": 2 * y["a"], "b": -y["b"]}

    ys, ref = odeflow.odeint(swapped, y0, T), odeflow.odeint(ordered, y0, T)
    assert all(torch.equal(ys[k], ref[k]) for k in y0)
    with pytest.raises(TypeError, match="expected a dict with keys"):
        odeflow.odeint(lambda t, y: {"a": y["a"]}, y0, T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_size_grid_ignores_the_rounding_of_the_times(dtype):
    # float32 0.1 is 0.1000000015: one step per interval, not two
    t = torch.linspace(0, 1, 11, dtype=dtype)
    sol = odeflow.solve(f, torch.ones(2, dtype=dtype), t, step_size=0.1)
    assert sol.steps == 10
    sol = odeflow.solve(f, torch.ones(2, dtype=dtype), t[[0, 3]], step_size=0.1)
    assert sol.steps == 3
    # a 0-d tensor step size is the number it holds
    ref = odeflow.odeint(f, torch.ones(2, dtype=dtype), t, step_size=0.05)
    got = odeflow.odeint(f, torch.ones(2, dtype=dtype), t, step_size=torch.tensor(0.05))
    assert torch.equal(got, ref)


def test_float64_times_reach_func_in_the_state_dtype():
    # the common "concatenate t" field with a float64 grid (e.g. from numpy), as torchdiffeq
    lin = torch.nn.Linear(3, 2)
    seen = set()

    def field(t, y):
        seen.add(t.dtype)
        return lin(torch.cat([y, t.expand(y.shape[0], 1)], 1))

    t = torch.linspace(0, 1, 3, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(4, 2)
    ys = odeflow.odeint(field, y0, t, params=list(lin.parameters()))
    assert ys.dtype == torch.float32 and seen == {torch.float32}
    (g,) = torch.autograd.grad(ys[-1].sum(), t)  # the time gradient reaches the float64 t
    assert g.dtype == torch.float64 and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("recompute", ["step", "stage"])
def test_module_reading_an_unregistered_tensor_is_refused(recompute):
    outside = torch.nn.Linear(2, 2)  # not a submodule: the adjoint cannot see its weights

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.held = [torch.randn(2, requires_grad=True)]  # a list hides it too

        def forward(self, t, y):
            return torch.tanh(self.lin(y)) + 0.1 * outside(y) * self.held[0]

    func = Field()
    y0 = torch.randn(3, 2, requires_grad=True)
    grad = odeflow.DiscreteAdjoint(recompute=recompute)
    ys = odeflow.odeint(func, y0, torch.linspace(0, 1, 3), gradient=grad)
    with pytest.raises(ValueError, match="not among the parameters of func"):
        ys[-1].sum().backward()
    # naming the tensors is the fix: then the adjoint equals backprop
    params = [*func.parameters(), *outside.parameters(), func.held[0]]
    ys = odeflow.odeint(func, y0, torch.linspace(0, 1, 3), gradient=grad, params=params)
    ga = torch.autograd.grad(ys[-1].sum(), params)
    ys = odeflow.odeint(func, y0, torch.linspace(0, 1, 3), gradient="backprop")
    gb = torch.autograd.grad(ys[-1].sum(), params)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


def test_16bit_state_with_16bit_module_names_the_precision():
    func = torch.nn.Sequential(torch.nn.Linear(2, 2)).to(torch.bfloat16)
    y0 = torch.randn(3, 2, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="precision='bf16'"):
        odeflow.odeint(lambda t, y: func(y), y0, T, params=[])
    ys = odeflow.odeint(lambda t, y: func(y), y0, T, params=[], precision="bf16")
    assert ys.dtype == torch.bfloat16 and torch.isfinite(ys).all()


def test_times_that_coincide_in_the_state_precision_are_named():
    t = torch.tensor([1e8, 1e8 + 1], dtype=torch.float64)  # equal in float32
    with pytest.raises(ValueError, match=r"in torch\.float32, the state.s precision"):
        odeflow.odeint(f, torch.ones(2), t)
    assert odeflow.odeint(f, torch.ones(2, dtype=torch.float64), t).shape == (2, 2)
