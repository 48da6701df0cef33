"""`fastadv demo` without a browser: the explorer's attack is fastadv's API with the same seed
(bit for bit), bare and behind a defence, adaptive or not; adaptive attacks beat the plain ones
on a masking defence; uploads become the model's input or a message, the page's handlers turn
errors into messages, the robustness curve is evaluate()'s report (`fastadv eval --defense
--adaptive`'s with a defence) and is cached, and the command's errors are one line with exit
status 2. The page in a real browser: test_demo_browser.py."""

import json
import socket
import sys

import numpy as np
import pytest
import torch
from support.model_state import assert_unchanged, snapshot
from support.reports import without_timings

import fastadv
from fastadv.__main__ import main
from fastadv.data import as_selection
from fastadv.defenses import Defended, parse_defense
from fastadv.demo import ATTACKS, Explorer, view
from fastadv.demo.curve import CurveJobs
from fastadv.demo.uploads import UploadError, read_upload
from fastadv.evaluation import evaluate

gradio = pytest.importorskip("gradio", reason="the demo's page needs gradio (pip install 'fastadv[demo]')")
from fastadv.demo.app import Page  # noqa: E402


@pytest.fixture(scope="module")
def explorer(digits_model):
    model, images, labels = digits_model
    # the class names `fastadv demo` passes for the digits (its data's, as fastadv eval reports them)
    return Explorer(model, images, labels, model_name="digits", data_name="digits",
                    class_names=[str(d) for d in range(10)])  # fmt: skip


def expected_attack(model, name, x, y, eps, steps, alpha, targeted, seed, **options):
    """The same attack written as a user calls fastadv (independent of the demo's registry);
    `options`: adaptive=True, eot_samples=n."""
    gen = torch.Generator().manual_seed(seed)
    a, o = alpha * eps, options
    return {
        "FGSM": lambda: fastadv.FGSM(model, eps=eps, targeted=targeted, **o),
        "PGD": lambda: fastadv.PGD(model, eps=eps, alpha=a, steps=steps, targeted=targeted, generator=gen, **o),
        "MI-FGSM": lambda: fastadv.MIFGSM(model, eps=eps, alpha=a, steps=steps, targeted=targeted, **o),
        "PGD-L2": lambda: fastadv.PGDL2(model, eps=eps, alpha=a, steps=steps, targeted=targeted, generator=gen, **o),
        "DeepFool": lambda: fastadv.DeepFool(model, steps=steps, **o),
        "CW": lambda: fastadv.CW(model, steps=steps, lr=0.05, binary_search_steps=5, targeted=targeted, **o),
    }[name]().run(x, y)


CASES = [("FGSM", 0.1, False), ("PGD", 0.1, False), ("PGD", 0.15, True), ("MI-FGSM", 0.08, False),
         ("PGD-L2", 1.5, False), ("PGD-L2", 2.0, True), ("DeepFool", 1.0, False), ("CW", 1.0, False)]  # fmt: skip


@pytest.mark.parametrize("name,eps,targeted", CASES)
def test_attack_equals_fastadv_api(explorer, name, eps, targeted):
    model = explorer.model
    before = snapshot(model)
    picture = explorer.picture(5)
    target = (picture.label + 3) % 10
    outcome = explorer.attack(picture, name, eps, steps=6, alpha=0.3, targeted=targeted, target=target, seed=11)
    x, y = picture.image.unsqueeze(0), torch.tensor([target if targeted else picture.label])
    result = expected_attack(model, name, x, y, eps, 6, 0.3, targeted, 11)
    assert torch.equal(outcome.adv, result.adv[0])
    with torch.no_grad():
        probs = model(result.adv).softmax(1)[0]
        clean_probs = model(x).softmax(1)[0]
    assert torch.equal(outcome.adv_probs, probs) and torch.equal(outcome.clean_probs, clean_probs)
    delta = (result.adv - x).flatten()
    assert outcome.linf == float(delta.abs().max()) and outcome.l2 == float(delta.norm())
    assert outcome.l0 == int((delta != 0).sum())
    success = bool(result.success[0])
    if ATTACKS[name].minimal:  # judged against the budget, as evaluate does
        success = success and float(delta.norm()) <= eps * (1 + 1e-6)
    assert outcome.success == success
    assert outcome.attacked_class == int(y[0]) and outcome.seconds > 0
    assert_unchanged(model, before)


# (defence, attack, adaptive, the page's EOT samples, what the Python call passes: the EOT draws
# go only to an adaptive attack on a random defence, as evaluate gives them)
DEFENDED_CASES = [
    ("bits:5", "PGD", False, 1, {}),
    ("bits:5", "PGD", True, 4, {"adaptive": True}),  # deterministic: no EOT
    ("jpeg:75", "FGSM", True, 1, {"adaptive": True}),
    ("median:3", "MI-FGSM", False, 1, {}),
    ("resize", "PGD", False, 3, {}),
    ("resize", "PGD", True, 3, {"adaptive": True, "eot_samples": 3}),
    ("jpeg:75,bits:5", "DeepFool", True, 1, {"adaptive": True}),
]


@pytest.mark.parametrize("spec,name,adaptive,eot,options", DEFENDED_CASES)
def test_defended_attack_equals_fastadv_api(explorer, spec, name, adaptive, eot, options):
    """The explorer behind a defence is Defended(model, parse_defense(spec, generator seeded with
    the seed)), and that one model gives the clean probabilities, the attack (its own generator,
    the same seed) and the adversarial probabilities, in that order."""
    model, seed, eps = explorer.model, 7, 0.1 if ATTACKS[name].norm == "linf" else 1.0
    before = snapshot(model)
    picture = explorer.picture(11)
    outcome = explorer.attack(picture, name, eps, steps=5, alpha=0.3, seed=seed, defense=spec, adaptive=adaptive,
                              eot_samples=eot)  # fmt: skip
    x, y = picture.image.unsqueeze(0), torch.tensor([picture.label])
    defended = Defended(model, parse_defense(spec, torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        clean_probs = defended(x).softmax(1)[0]
    result = expected_attack(defended, name, x, y, eps, 5, 0.3, False, seed, **options)
    with torch.no_grad():
        adv_probs = defended(result.adv).softmax(1)[0]
    assert torch.equal(outcome.adv, result.adv[0])
    assert torch.equal(outcome.clean_probs, clean_probs) and torch.equal(outcome.adv_probs, adv_probs)
    assert (outcome.defense, outcome.adaptive, outcome.eot_samples) == (spec, adaptive, options.get("eot_samples", 1))
    assert_unchanged(model, before)


def test_a_random_defence_repeats_with_its_seed(explorer):
    picture = explorer.picture(2)
    runs = [explorer.attack(picture, "PGD", 0.1, steps=5, seed=seed, defense="resize", adaptive=True, eot_samples=2)
            for seed in (3, 3, 4)]  # fmt: skip
    assert torch.equal(runs[0].adv, runs[1].adv) and torch.equal(runs[0].clean_probs, runs[1].clean_probs)
    assert not torch.equal(runs[0].clean_probs, runs[2].clean_probs)  # other draws of the resize


def test_adaptive_pgd_breaks_bit_depth_reduction_where_plain_pgd_is_masked(explorer):
    """BitDepth's own gradient is zero: plain PGD barely moves the defended model's predictions,
    while adaptive PGD (BPDA) fools it on most of the same images, as the page shows them."""
    page, n, fooled = Page(explorer), 24, {False: 0, True: 0}
    for index in range(n):
        picture = explorer.picture(index)
        for adaptive in (False, True):
            outcome = explorer.attack(picture, "PGD", 0.1, steps=10, seed=0, defense="bits:5", adaptive=adaptive)
            fooled[adaptive] += outcome.adv_pred != picture.label
    assert fooled[True] >= fooled[False] + n // 2, fooled
    assert fooled[False] <= n // 4, fooled  # masked: the plain attack reports the defence robust
    summary = page.show(explorer.picture(0), "PGD", 0.1, 10, 0.25, False, 1, 0, "bits:5", True, 1)[5]
    assert summary.startswith("**defence:** bits:5: BitDepth(bits=5) (the predictions are the defended model's) "
                              "· **attack:** adaptive (BPDA through the transforms)")  # fmt: skip
    plain = page.show(explorer.picture(0), "PGD", 0.1, 10, 0.25, False, 1, 0)[5]
    assert plain.startswith("**defence:** none (the model alone) · **attack:** not adaptive")


def test_defence_arguments_are_checked(explorer):
    picture = explorer.picture(0)
    with pytest.raises(ValueError, match="defense: unknown transform 'blur'"):
        explorer.attack(picture, "FGSM", 0.1, defense="blur:3")
    with pytest.raises(ValueError, match="eot_samples must be an int >= 1"):
        explorer.attack(picture, "FGSM", 0.1, defense="resize", adaptive=True, eot_samples=0)
    page = Page(explorer)
    assert page.show(picture, "FGSM", 0.1, 20, 0.25, False, 1, 0, "bits:9")[-1] == (
        "**Error:** defense: bits:9: bits must be in 1..8, got 9"
    )


def test_fgsm_at_zero_keeps_the_clean_prediction_and_large_eps_flips_it(explorer):
    picture = explorer.picture(3)
    zero = explorer.attack(picture, "FGSM", 0.0)
    assert zero.adv_pred == zero.clean_pred == picture.label and zero.l0 == 0 and not zero.success
    large = explorer.attack(picture, "FGSM", 0.3)
    assert large.adv_pred != large.clean_pred and large.success and large.linf == pytest.approx(0.3)


def test_attack_arguments_are_checked(explorer):
    picture = explorer.picture(0)
    with pytest.raises(ValueError, match="DeepFool has no targeted mode"):
        explorer.attack(picture, "DeepFool", 1.0, targeted=True)
    with pytest.raises(ValueError, match="target must be a class in"):
        explorer.attack(picture, "PGD", 0.1, targeted=True, target=10)
    with pytest.raises(ValueError, match="image index"):
        explorer.picture(10_000)


def test_slider_ranges_follow_the_data(explorer):
    assert explorer.eps_max("linf") == 0.3 and explorer.eps_max("l2") == 2.4  # 0.3 * sqrt(256) / 2
    rgb = Explorer(fastadv.models.small_cnn(in_channels=3).eval(), torch.rand(2, 3, 16, 16), torch.zeros(2))
    assert rgb.eps_max("linf") == 16 / 255


def test_pictures_are_upscaled_with_nearest_and_the_perturbation_amplified():
    image = torch.rand(1, 16, 16)
    shown = view.picture(image)
    assert shown.shape == (192, 192, 3) and shown.dtype == np.uint8
    expected = (image[0] * 255).round().to(torch.uint8).numpy()
    assert (shown[::12, ::12, 0] == expected).all() and (shown[11::12, 11::12, 2] == expected).all()
    delta = torch.tensor([[[0.0, 0.01], [-0.02, 0.005]]])
    assert view.perturbation(delta).tolist() == [[[0.5, 0.75], [0.0, 0.625]]]
    assert (view.perturbation(torch.zeros(1, 2, 2)) == 0.5).all()


# ---- uploads ----


def _png(path, array, mode=None, **info):
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path, **info)
    return str(path)


def test_upload_of_the_model_size_is_read_exactly(tmp_path):
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image, note = read_upload(_png(tmp_path / "a.png", pixels), 1, (16, 16))
    assert image.shape == (1, 16, 16) and note == "a.png"
    assert torch.equal(image[0], torch.from_numpy(pixels).float() / 255)


def test_upload_is_converted_and_resized_with_a_note(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 28, 3))
    image, note = read_upload(_png(tmp_path / "c.png", rgb), 1, (16, 16))
    assert image.shape == (1, 16, 16) and "converted to grayscale" in note and "resized from 28x20 to 16x16" in note
    image, note = read_upload(_png(tmp_path / "c.png", rgb), 3, (16, 16))
    assert image.shape == (3, 16, 16) and 0 <= float(image.min()) and float(image.max()) <= 1
    opaque = np.dstack([rgb[:16, :16], np.full((16, 16), 255)])
    image, note = read_upload(_png(tmp_path / "o.png", opaque, "RGBA"), 3, (16, 16))
    assert "alpha channel dropped" in note and torch.equal(
        image, torch.from_numpy(rgb[:16, :16]).permute(2, 0, 1) / 255.0
    )


def test_bad_uploads_raise_upload_error(tmp_path):
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    with pytest.raises(UploadError, match="not-an-image.png: not a readable PNG or JPEG image"):
        read_upload(str(text), 1, (16, 16))
    transparent = np.dstack([np.zeros((16, 16, 3)), np.full((16, 16), 100)])
    with pytest.raises(UploadError, match="transparent pixels"):
        read_upload(_png(tmp_path / "t.png", transparent, "RGBA"), 1, (16, 16))
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "g.gif")
    with pytest.raises(UploadError, match="a GIF image; upload a PNG or JPEG"):
        read_upload(str(tmp_path / "g.gif"), 1, (16, 16))


# ---- the page's handlers ----

CONTROLS = ("FGSM", 0.2, 20, 0.25, False, 1, 0)  # attack, eps, steps, alpha, targeted, target, seed


def test_page_shows_an_attack(explorer):
    page = Page(explorer)
    clean, adv, delta, top_clean, top_adv, summary, message = page.show(explorer.picture(3), *CONTROLS)
    assert message == "" and clean.shape == adv.shape == (192, 192, 3) and delta.shape == (204, 204, 3)
    assert len(top_clean) == len(top_adv) == 5 and "| prediction | 7 |" in summary
    outcome = explorer.attack(explorer.picture(3), "FGSM", 0.2)
    assert f"| {outcome.linf:.6g} | {outcome.l2:.6g} | {outcome.l0} |" in summary


def test_page_errors_become_messages(explorer, tmp_path):
    page = Page(explorer)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    outputs = page.upload(str(bad), *CONTROLS)
    assert outputs[-1].startswith("**Error:** bad.png: not a readable PNG") and len(outputs) == 10
    assert all(o == gradio.skip() for o in outputs[:-1])  # the picture shown so far stays
    assert page.pick(999, *CONTROLS)[-1].startswith("**Error:** image index must be in [0, 358]")
    assert page.show(explorer.picture(0), "DeepFool", 1.0, 20, 0.25, True, 1, 0)[-1] == (
        "**Error:** DeepFool has no targeted mode"
    )
    assert "need a value" in page.show(explorer.picture(0), "PGD", 0.1, None, 0.25, False, 1, 0)[-1]

    def broken(x):
        raise RuntimeError("CUDA out of memory (pretend)")

    failing = Page(Explorer(fastadv.models.small_cnn().eval(), explorer.images[:4], explorer.labels[:4]))
    failing.explorer.model = broken
    outputs = failing.show(explorer.picture(0), *CONTROLS)
    assert outputs[-1] == "**Error:** the model or attack failed (RuntimeError: CUDA out of memory (pretend))"
    # an upload the model can use afterwards still works: the page keeps answering
    good = page.upload(_png(tmp_path / "ok.png", np.zeros((16, 16))), *CONTROLS)
    assert good[-1] == "" and good[0].label is None and "upload ok.png" in good[2]


def test_changing_the_attack_rescales_the_slider(explorer):
    page = Page(explorer)
    outputs = page.change_attack(explorer.picture(0), "FGSM", "PGD-L2", 0.15, 3, 0.25, True, 1, 0)
    slider, _, _, targeted, shown = outputs[:5]
    assert slider["maximum"] == 2.4 and slider["value"] == pytest.approx(1.2) and shown == "PGD-L2"
    assert targeted["value"] is True and outputs[-1] == ""
    outputs = page.change_attack(explorer.picture(0), "PGD-L2", "DeepFool", 1.2, 3, 0.25, True, 1, 0, "bits:5", True, 1)
    assert outputs[3] == {"value": False, "interactive": False, "__type__": "update"} and outputs[-1] == ""


# ---- the robustness curve ----


def test_curve_is_evaluates_report_and_is_cached(explorer, tmp_path):
    jobs = CurveJobs(explorer, str(tmp_path), batches=2)
    curve = jobs.run(["fgsm", "pgd"], [0.2, 0.1], steps=3, samples=20, seed=4)
    expected = evaluate(explorer.model, (explorer.images[:20], explorer.labels[:20]), ["fgsm", "pgd"], [0.1, 0.2],
                        steps=3, batch_size=10, seed=4, progress=False)  # fmt: skip
    expected.update(model="digits", data="digits", classes={str(d): d for d in range(10)})  # the explorer's names
    assert without_timings(curve.report) == without_timings(expected) and not curve.cached
    with open(curve.report_path) as f:
        assert json.load(f) == json.loads(json.dumps(curve.report))
    with open(curve.plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    again = jobs.run(["fgsm", "pgd"], [0.1, 0.2], steps=3, samples=20, seed=4)
    assert again.cached and again.report is curve.report and jobs.computed == 1
    other = jobs.run(["fgsm", "pgd"], [0.1], steps=3, samples=5, seed=4)
    assert not other.cached and jobs.computed == 2
    assert jobs.key(["fgsm"], [0.1], 3, 30, 4) != CurveJobs(
        Explorer(fastadv.models.small_cnn().eval(), explorer.images[:2], explorer.labels[:2])
    ).key(["fgsm"], [0.1], 3, 30, 4)


def test_curve_behind_a_defence_is_evaluates_reports_and_fastadv_evals(explorer, digits_model, tmp_path):
    """The curve tab with a random defence, adaptive: the bare model's evaluate() and the defended
    model's (its transforms seeded with the curve's seed), side by side, and the same report as
    `fastadv eval --defense resize --adaptive --eot-samples 2` writes for the same samples."""
    jobs = CurveJobs(explorer, str(tmp_path), batches=2)
    curve = jobs.run(["fgsm", "pgd"], [0.1], steps=3, samples=12, seed=4, defense="resize", adaptive=True,
                     eot_samples=2)  # fmt: skip
    data, settings = as_selection("data", (explorer.images[:12], explorer.labels[:12])), {"steps": 3, "batch_size": 6,
                                                                                          "seed": 4}  # fmt: skip
    data.source.classes = explorer.class_names  # as the page and fastadv eval name the digits
    common = dict(settings, adaptive=True, eot_samples=2, progress=False)
    bare = evaluate(explorer.model, data, ["fgsm", "pgd"], [0.1], **common)
    defended = Defended(explorer.model, parse_defense("resize", torch.Generator().manual_seed(4)))
    behind = evaluate(defended, data, ["fgsm", "pgd"], [0.1], **common)
    report = without_timings(curve.report)
    assert report["defenses"] == without_timings([{"defense": "none", **bare}, {"defense": "resize", **behind}])
    runs = (("none", bare), ("resize", behind))
    assert report["comparison"] == without_timings([{"defense": d, **r} for d, run in runs for r in run["comparison"]])
    assert behind["adaptive"]["settings"]["eot_samples"] == 2 and curve.plot_path.endswith("defenses.png")
    # the command line: the digits test split's first 12 samples, the same settings
    fastadv.models.save(_saveable(digits_model[0]), str(tmp_path / "m.pt"))
    assert main(["eval", "--model", str(tmp_path / "m.pt"), "--limit", "12", "--attacks", "fgsm,pgd", "--eps", "0.1",
                 "--steps", "3", "--batch-size", "6", "--seed", "4", "--defense", "resize", "--adaptive",
                 "--eot-samples", "2", "--workers", "0", "--device", "cpu", "--no-plots", "--quiet",
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    written = without_timings(json.loads((tmp_path / "eval" / "report.json").read_text()))
    assert {**written, "model": "digits"} == report
    # the cache tells defences, adaptive and EOT draws apart
    assert jobs.run(["fgsm", "pgd"], [0.1], steps=3, samples=12, seed=4, defense="resize", adaptive=True,
                    eot_samples=2).cached  # fmt: skip
    assert not jobs.run(["fgsm", "pgd"], [0.1], steps=3, samples=12, seed=4, defense="resize").cached
    assert len({jobs.key(["fgsm"], [0.1], 3, 12, 4, d, a, e) for d in ("none", "bits:5") for a in (False, True)
                for e in (1, 2)}) == 6  # EOT draws count only when adaptive  # fmt: skip


def test_page_curve_messages(explorer):
    page = Page(explorer)
    assert (
        page.curve(["FGSM"], "0.1, x", 10, 2, 0)[-1]
        == "**Error:** eps grid: expected comma-separated numbers, got '0.1, x'"
    )
    assert page.curve([], "0.1", 10, 2, 0)[-1] == "**Error:** attacks: choose at least one attack"
    plot, table, report, message = page.curve(["FGSM"], "0.1", 10, 2, 0)
    assert message.startswith("computed: 10 samples") and "clean accuracy" in table
    plot, table, report, message = page.curve(["FGSM"], "0.1", 10, 2, 0, "bits:5", True, 1)
    assert message == (
        "computed: 10 samples, the report `fastadv eval --defense bits:5 --adaptive --eot-samples 1` writes"
    )
    assert "non-adaptive" in table and plot.endswith("defenses.png")


# ---- the command ----


def test_demo_without_gradio_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    assert main(["demo", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastadv demo: error: gradio is not installed: pip install 'fastadv[demo]' (the README's set-up "
                   "installs it)"]  # fmt: skip


@pytest.mark.parametrize("argv,message", [
    (["--port", "0"], "argument --port: must be in [1, 65535], got 0"),
    (["--port", "x"], "argument --port: expected an integer, got 'x'"),
    (["--share", "yes"], "argument --share: invalid choice: 'yes'"),
    (["--threads", "0"], "argument --threads: must be"),
    (["--model", "/nonexistent/model.pt"], "--model: "),
    (["--data", "/nonexistent/data.npz"], "--data: /nonexistent/data.npz: no such file"),
    (["--defense", "bits:9"], "argument --defense: bits:9: bits must be in 1..8"),  # as fastadv eval says it
    (["--defense", "blur:3"], "argument --defense: unknown transform 'blur' in 'blur:3'; expected one of bits:"),
    (["--eot-samples", "0"], "argument --eot-samples: must be"),
])  # fmt: skip
def test_demo_bad_arguments_exit_2(argv, message, capsys, tmp_path, monkeypatch, digits_model):
    monkeypatch.setenv("FASTADV_CACHE", str(tmp_path))
    fastadv.models.save(_saveable(digits_model[0]), str(tmp_path / "digits-small_cnn-standard.pt"))
    parsed_by_argparse = ("--port", "--share", "--threads", "--defense", "--eot-samples")
    with pytest.raises(SystemExit) if argv[0] in parsed_by_argparse else _no_raise() as raised:
        code = main(["demo", "--quiet", "--cache", str(tmp_path / "digits-small_cnn-standard.pt"), *argv])
    code = raised.value.code if raised else code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_demo_port_in_use_is_one_line(capsys, tmp_path, digits_model):
    cache = str(tmp_path / "model.pt")
    fastadv.models.save(_saveable(digits_model[0]), cache)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--quiet", "--cache", cache, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"fastadv demo: error: --port / --host: cannot serve on 127.0.0.1:{port}"
    )


def _saveable(model):
    copy = fastadv.models.small_cnn()
    copy.load_state_dict(model.state_dict())
    return copy.eval()


class _no_raise:  # noqa: N801 - used as `with ... as raised`, like pytest.raises
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_slider_events_do_not_queue_up(explorer):
    """The sliders' events are always_last (a newer value replaces one still waiting) and every
    explorer event shares one queue slot; the curve has its own, so it runs beside them. A
    defence given to `fastadv demo --defense` is preselected (added to the picker's list)."""
    from fastadv.demo.app import build_app

    app = build_app(Explorer(explorer.model, explorer.images[:8], explorer.labels[:8]), defense="jpeg:75,bits:5",
                    adaptive=True)  # fmt: skip
    config = app.get_config_file()
    elem_ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    modes = {(elem_ids.get(t[0]), t[1]): d["trigger_mode"] for d in config["dependencies"] for t in d["targets"]}
    assert all(modes[(slider, "input")] == "always_last" for slider in ("eps", "steps", "alpha", "eot"))
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert props["defense"]["value"] == "jpeg:75,bits:5" and props["adaptive"]["value"] is True
    assert [value for _, value in props["defense"]["choices"]] == [
        "none",
        "bits:5",
        "jpeg:75",
        "median:3",
        "resize",
        "jpeg:75,bits:5",
    ]
    slots = {f.name: (f.concurrency_id, f.concurrency_limit) for f in app.fns.values()}
    assert slots.pop("curve") == ("curve", 1)
    assert set(slots.values()) == {("explore", 1)} and {"show", "upload", "pick", "change_attack"} <= set(slots)


# ---- 16-bit uploads, the seed field, the server's paths ----


def test_a_16_bit_grayscale_upload_is_scaled_to_0_1_not_clipped(tmp_path):
    from PIL import Image

    values = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image, note = read_upload(str(path), 1, (16, 16))
    torch.testing.assert_close(image[0], torch.from_numpy(values.astype(np.float32) / 65535), rtol=0, atol=1e-6)
    assert "16-bit grayscale scaled to [0, 1]" in note
    rgb, note = read_upload(str(path), 3, (8, 8))  # resized in floats, one value per pixel repeated
    assert rgb.shape == (3, 8, 8) and (rgb[0] == rgb[2]).all() and 0.1 < float(rgb.mean()) < 0.9
    assert "repeated as RGB" in note and "resized from 16x16 to 8x8" in note


def test_a_huge_seed_is_one_clear_line(explorer):
    page = Page(explorer)
    message = page.show(explorer.picture(0), "FGSM", 0.1, 20, 0.25, False, 1, 1e20)[-1]
    assert message == "**Error:** seed must be a whole number from 0 to 2**63 - 1, got 1e+20"
    assert "seed must be" in page.show(explorer.picture(0), "FGSM", 0.1, 20, 0.25, False, 1, -1)[-1]
    assert page.show(explorer.picture(0), "FGSM", 0.1, 20, 0.25, False, 1, 2.0)[-1] == ""
    assert "seed must be" in page.curve(["FGSM"], "0.1", 8, 2, 1e20)[-1]


def test_upload_errors_name_the_file_not_the_servers_path(explorer, tmp_path):
    page = Page(explorer)
    bad = tmp_path / "upload-folder-of-the-server" / "mine.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    message = page.upload(str(bad), *CONTROLS)[-1]
    assert message.startswith("**Error:** mine.png: not a readable PNG") and str(tmp_path) not in message


def test_nan_images_are_refused_by_the_demo_and_the_explorer(tmp_path, capsys, monkeypatch, digits_model, explorer):
    monkeypatch.setenv("FASTADV_CACHE", str(tmp_path))
    cache = str(tmp_path / "digits-small_cnn-standard.pt")
    fastadv.models.save(_saveable(digits_model[0]), cache)
    x = np.random.default_rng(0).random((20, 1, 16, 16), dtype=np.float32)
    x[5, 0, 3, 3] = np.nan  # past the two images the model is checked with
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(20) % 10)
    served = []
    monkeypatch.setattr("fastadv.demo.app.serve", lambda *a, **k: served.append(a))
    assert main(["demo", "--quiet", "--cache", cache, "--data", str(tmp_path / "nan.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not served and len(err) == 1 and "must lie in [0, 1] (no NaN)" in err[0] and "from sample 0" in err[0]
    images = explorer.images.clone()
    images[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\] \(no NaN or infinite values\)"):
        Explorer(explorer.model, images, explorer.labels)  # the curve tab evaluates these


def test_the_perturbation_is_framed_and_a_light_upload_is_told_what_the_model_expects(explorer, tmp_path):
    # white +eps pixels vanished into the page's white panel; a dark-on-white digit was
    # classified without a word that the model knows white digits on black
    framed = view.picture(torch.ones(1, 16, 16), frame=True)
    assert framed.shape == (204, 204, 3) and (framed[0, 0] == view.FRAME_COLOUR).all()
    assert (framed[view.FRAME : -view.FRAME, view.FRAME : -view.FRAME] == 255).all()
    page = Page(explorer)
    assert page.expected_upload() == (
        "the model was trained on 16x16 grayscale images, light on a dark background, as the test images here"
    )
    light = np.full((16, 16), 255, dtype=np.uint8)
    light[4:12, 7:9] = 0  # a dark stroke on white
    source = page.upload(_png(tmp_path / "ink.png", light), *CONTROLS)[2]
    assert "its background is light, the model's images have dark ones: invert it" in source
    dark = page.upload(_png(tmp_path / "chalk.png", 255 - light), *CONTROLS)[2]
    assert "invert" not in dark
