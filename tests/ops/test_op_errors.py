"""Every bad input of DESIGN.md gets the right exception, a message naming the argument, and
`out` stays untouched."""

import pytest
import torch

import fastadv


def _good():
    x = torch.rand(2, 3, 4, 4)
    return {"x_adv": x.clone(), "grad": torch.randn(2, 3, 4, 4), "x": x, "eps": 0.03, "alpha": 0.01}


def _with(**changes):
    def build():
        kwargs = _good()
        for key, value in changes.items():
            kwargs[key] = value(kwargs) if callable(value) else value
        return kwargs

    return build


# (case id, kwargs builder, exception, text the message must contain)
STEP_CASES = [
    ("x_adv-not-tensor", _with(x_adv=[1.0, 2.0]), TypeError, "x_adv"),
    ("grad-not-tensor", _with(grad=3.0), TypeError, "grad"),
    ("x-not-tensor", _with(x=None), TypeError, "x must"),
    ("x_adv-int", _with(x_adv=lambda k: k["x_adv"].to(torch.int32)), TypeError, "x_adv"),
    ("x-int", _with(x=lambda k: k["x"].to(torch.int64)), TypeError, "x must"),
    ("grad-int", _with(grad=lambda k: k["grad"].to(torch.int16)), TypeError, "grad"),
    ("x_adv-complex", _with(x_adv=lambda k: k["x_adv"].to(torch.complex64)), TypeError, "x_adv"),
    ("x_adv-float64", _with(x_adv=lambda k: k["x_adv"].double()), TypeError, "x_adv"),
    ("x_adv-0d", _with(x_adv=torch.tensor(0.5), grad=torch.tensor(1.0), x=torch.tensor(0.5)), ValueError, "x_adv"),
    ("grad-shape", _with(grad=torch.randn(2, 3, 4, 5)), ValueError, "grad"),
    ("x-shape", _with(x=torch.rand(3, 3, 4, 4)), ValueError, "x has shape"),
    ("x-dtype", _with(x=lambda k: k["x"].half()), TypeError, "x has dtype"),
    ("x-device", _with(x=lambda k: k["x"].to("meta")), ValueError, "x is on"),
    ("grad-device", _with(grad=lambda k: k["grad"].to("meta")), ValueError, "grad is on"),
    ("eps-negative", _with(eps=-0.1), ValueError, "eps"),
    ("eps-nan", _with(eps=float("nan")), ValueError, "eps"),
    ("alpha-negative", _with(alpha=-1e-3), ValueError, "alpha"),
    ("eps-inf", _with(eps=float("inf")), ValueError, "eps must be finite"),
    ("alpha-inf", _with(alpha=float("inf")), ValueError, "alpha must be finite"),
    ("alpha-nan", _with(alpha=float("nan")), ValueError, "alpha"),
    ("eps-beyond-float32", _with(eps=1e39), ValueError, "eps must be finite"),
    ("eps-inf-0d", _with(eps=torch.tensor(float("inf"))), ValueError, "eps must be finite"),
    ("eps-inf-per-sample", _with(eps=torch.tensor([0.1, float("inf")])), ValueError, "eps must be finite"),
    ("alpha-inf-per-sample", _with(alpha=torch.tensor([float("inf"), 0.1])), ValueError, "alpha must be finite"),
    ("alpha-nan-per-sample", _with(alpha=torch.tensor([float("nan"), 0.1])), ValueError, "alpha"),
    ("eps-negative-tensor", _with(eps=torch.tensor([0.1, -0.1])), ValueError, "eps must be >= 0"),
    ("eps-nan-beside-negative", _with(eps=torch.tensor([-0.1, float("nan")])), ValueError, "eps contains NaN"),
    ("eps-nan-beside-inf", _with(eps=torch.tensor([float("inf"), float("nan")])), ValueError, "eps contains NaN"),
    ("eps-minus-inf", _with(eps=torch.tensor([0.1, -float("inf")])), ValueError, "eps must be finite"),
    (
        "lower-nan-per-channel",
        _with(lower=torch.tensor([0.0, float("nan"), 0.0]).view(1, 3, 1, 1)),
        ValueError,
        "lower contains NaN",
    ),  # fmt: skip
    ("alpha-negative-0d", _with(alpha=torch.tensor(-0.5)), ValueError, "alpha"),
    ("eps-string", _with(eps="0.1"), TypeError, "eps"),
    ("eps-bool", _with(eps=True), TypeError, "eps"),
    ("eps-complex", _with(eps=torch.tensor([0.1, 0.1], dtype=torch.complex64)), TypeError, "eps"),
    ("eps-length", _with(eps=torch.full((3,), 0.1)), ValueError, "eps"),
    ("eps-spatial", _with(eps=torch.full((1, 1, 4, 1), 0.1)), ValueError, "eps"),
    ("alpha-too-many-dims", _with(alpha=torch.full((1, 2, 3, 4, 4), 0.1)), ValueError, "alpha"),
    ("eps-wrong-channels", _with(eps=torch.full((1, 2, 1, 1), 0.1)), ValueError, "eps"),
    ("eps-device", _with(eps=torch.full((1, 3, 1, 1), 0.1, device="meta")), ValueError, "eps"),
    ("lower-above-upper", _with(lower=0.8, upper=0.2), ValueError, "lower"),
    (
        "lower-above-upper-per-channel",
        _with(lower=torch.tensor([0.0, 0.9, 0.0]).view(1, 3, 1, 1), upper=0.5),
        ValueError,
        "lower",
    ),
    ("targeted-not-bool", _with(targeted="yes"), TypeError, "targeted"),
    ("backend-unknown", _with(backend="fastest"), ValueError, "backend"),
    ("backend-not-string", _with(backend=3), TypeError, "backend"),
]


@pytest.mark.parametrize("step", [fastadv.linf_step, fastadv.l2_step], ids=["linf", "l2"])
@pytest.mark.parametrize("build,error,text", [c[1:] for c in STEP_CASES], ids=[c[0] for c in STEP_CASES])
def test_step_rejects_bad_input(step, build, error, text):
    kwargs = build()
    out = torch.full((2, 3, 4, 4), 7.0)
    if isinstance(kwargs.get("x_adv"), torch.Tensor) and kwargs["x_adv"].shape == out.shape:
        out = torch.full_like(kwargs["x_adv"], 7) if kwargs["x_adv"].dtype.is_floating_point else out
    before = out.clone()
    inputs = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    with pytest.raises(error, match=text):
        step(**kwargs, out=out if out.dtype == getattr(kwargs.get("x_adv"), "dtype", None) else None)
    assert torch.equal(out, before), "out was written although the call failed"
    for key, value in inputs.items():
        assert torch.equal(kwargs[key], value) or torch.isnan(value).any(), f"{key} was modified"


def _out_cases():
    x = torch.rand(2, 3, 4, 4)
    grad = torch.randn(2, 3, 4, 4)
    big = torch.rand(2, 3, 4, 5)
    return [
        ("out-not-tensor", dict(out=[0.0]), TypeError, "out"),
        ("out-shape", dict(out=torch.zeros(2, 3, 4)), ValueError, "out"),
        ("out-dtype", dict(out=torch.zeros(2, 3, 4, 4, dtype=torch.float16)), TypeError, "out"),
        ("out-device", dict(out=torch.zeros(2, 3, 4, 4, device="meta")), ValueError, "out"),
        ("out-is-grad", dict(grad=grad, out=grad), ValueError, "out overlaps grad"),
        ("out-is-x", dict(x=x, out=x), ValueError, "out overlaps x"),
        ("out-partial-x_adv", dict(x_adv=big[..., :4], out=big[..., 1:]), ValueError, "out partially overlaps"),
        ("out-expanded", dict(out=torch.zeros(1, 3, 4, 4).expand(2, 3, 4, 4)), ValueError, "internal overlap"),
    ]


@pytest.mark.parametrize("step", [fastadv.linf_step, fastadv.l2_step], ids=["linf", "l2"])
@pytest.mark.parametrize("case", _out_cases(), ids=lambda c: c[0])
def test_step_rejects_bad_out(step, case):
    _, changes, error, text = case
    kwargs = _good()
    kwargs.update(changes)
    out = kwargs["out"]
    before = out.clone() if isinstance(out, torch.Tensor) and out.device.type != "meta" else None
    with pytest.raises(error, match=text):
        step(**kwargs)
    if before is not None:
        assert torch.equal(out, before), "out was written although the call failed"


def test_unavailable_backend_says_why():
    k = _good()
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: .+"):
        fastadv.linf_step(**k, backend="cuda" if not torch.cuda.is_available() else "bogus-never")


def test_environment_override_is_checked(monkeypatch):
    monkeypatch.setenv("FASTADV_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTADV_BACKEND"):
        fastadv.linf_step(**_good())


@pytest.mark.parametrize(
    "changes,error,text",
    [
        (dict(eps=-1.0), ValueError, "eps"),
        (dict(lower=2.0), ValueError, "lower"),
        (dict(x=torch.rand(2, 3, 4, 4).half()), TypeError, "x has dtype"),
        (dict(out=torch.zeros(2, 3)), ValueError, "out"),
    ],
)
@pytest.mark.parametrize("project", [fastadv.linf_project, fastadv.l2_project], ids=["linf", "l2"])
def test_project_rejects_bad_input(project, changes, error, text):
    x = torch.rand(2, 3, 4, 4)
    kwargs = dict(x_adv=x + 0.1, x=x, eps=0.05)
    kwargs.update(changes)
    with pytest.raises(error, match=text):
        project(**kwargs)


@pytest.mark.parametrize(
    "changes,text",
    [
        (dict(eps=torch.full((1, 3, 1, 1), 0.1)), "eps.*per sample at most"),
        (dict(alpha=torch.full((2, 3, 1, 1), 0.1)), "alpha.*per sample at most"),
    ],
)
def test_l2_rejects_per_channel_eps_and_alpha(changes, text):
    kwargs = _good()
    kwargs.update(changes)
    out = torch.full_like(kwargs["x_adv"], 7.0)
    with pytest.raises(ValueError, match=text):
        fastadv.l2_step(**kwargs, out=out)
    assert bool((out == 7.0).all())
