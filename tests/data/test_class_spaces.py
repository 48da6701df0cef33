"""Class spaces: a data set's labels are matched to the model's outputs, never
compared across class spaces. ImageNet-1k's class list as shipped; WordNet-ID folders (a few of
ImageNet-A's classes) against a 1000-output model scored over the logits of the classes present
(a hand computation), eagerly and as TorchScript; --all-classes; class maps from files and dicts;
a folder that cannot be matched is one error (exit 2 on the command line); a 10-class folder
against a 10-output model works as before."""

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from support.cli import one_error_line
from torch import nn

import fastadv
from fastadv.__main__ import main
from fastadv.data import open_data
from fastadv.data.class_space import RestrictedLogits, read_class_map, resolve
from fastadv.data.imagenet import imagenet_classes, imagenet_index
from fastadv.evaluation import format_report

ROOT = Path(__file__).resolve().parents[2]
# one or two PGD steps at a tiny eps: enough to run the attack path on the restricted model
pytestmark = pytest.mark.filterwarnings("ignore:PGD. steps . alpha")
# four classes of ImageNet-A's 200, with their ImageNet-1k indices (hendrycks/natural-adv-examples'
# indices_in_1k starts 6, 11, 13, 15, 17)
WNIDS = {"n01498041": 6, "n01531178": 11, "n01534433": 13, "n01580077": 17}
# per class: (images, colour); the model below reads the colour
FOLDER = {"n01498041": (2, (255, 0, 0)), "n01531178": (3, (0, 0, 255)), "n01534433": (1, (0, 0, 255)),
          "n01580077": (2, (0, 0, 0))}  # fmt: skip


class ColorLogits(nn.Module):
    """1000 logits from the mean colour: class 6 = 4 R, class 11 = 4 G, class 13 = 4 B, class 500
    (not in the folder) = 10 always, every other class 0."""

    def __init__(self):
        super().__init__()
        weight, bias = torch.zeros(1000, 3), torch.zeros(1000)
        weight[6, 0] = weight[11, 1] = weight[13, 2] = 4.0
        bias[500] = 10.0
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) @ self.weight.t() + self.bias


# Over the folder's logits (6, 11, 13, 17): red -> 6 right (2), blue in n01531178 -> 13 wrong (3),
# blue in n01534433 -> 13 right (1), black -> a tie of zeros, the first (6) wrong (2): 3 of 8.
RESTRICTED_ACCURACY = 3 / 8


def _folder(root: Path, names) -> Path:
    from PIL import Image

    for k, (name, (count, colour)) in enumerate(zip(names, FOLDER.values(), strict=True)):
        (root / name).mkdir(parents=True)
        for i in range(count):  # mixed sizes, JPEG
            Image.new("RGB", (20 + 7 * i + k, 17 + 5 * i), colour).save(root / name / f"{i}.jpg", quality=95)
    return root


@pytest.fixture()
def imagenet_a(tmp_path):
    return _folder(tmp_path / "imagenet-a", WNIDS)


def _evaluate(model, folder, **kwargs):
    return fastadv.evaluate(model, open_data(str(folder), input_size=(16, 16)), attacks=["pgd"], eps=[0.001],
                            steps=1, progress=False, workers=0, **kwargs)  # fmt: skip


def test_the_imagenet_class_list_is_the_standard_one():
    classes = imagenet_classes()
    wnids = [wnid for wnid, _ in classes]
    assert len(wnids) == 1000 and len(set(wnids)) == 1000 and wnids == sorted(wnids)
    names = {i: classes[i][1].split(",")[0] for i in (0, 1, 6, 11, 17, 999)}
    assert names == {0: "tench", 1: "goldfish", 6: "stingray", 11: "goldfinch", 17: "jay", 999: "toilet tissue"}
    assert wnids[0] == "n01440764" and all(imagenet_index()[w] == i for w, i in WNIDS.items())
    # a non-editable install ships it too
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "data/imagenet_classes.tsv" in package_data["fastadv"]


@pytest.mark.parametrize("scripted", [False, True])
def test_wordnet_folders_are_scored_over_the_logits_of_their_classes(imagenet_a, scripted):
    model = ColorLogits()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scored = torch.jit.script(model) if scripted else model
    report = _evaluate(scored, imagenet_a)
    assert report["clean_accuracy"] == pytest.approx(RESTRICTED_ACCURACY)
    space = report["class_space"]
    assert (space["matched_by"], space["restricted"], space["scored_outputs"]) == ("imagenet-1k", True, 4)
    assert space["model_index"] == WNIDS and report["classes"] == {w: i for i, w in enumerate(WNIDS)}
    assert report["attacks"][0]["robust_accuracy"] <= RESTRICTED_ACCURACY
    assert "logits restricted to the 4 classes present" in format_report(report)
    # nothing of the caller's changed, no wrapper left on it
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not isinstance(scored, RestrictedLogits)  # (given in train mode: given back so)
    every = _evaluate(scored, imagenet_a, all_classes=True)
    assert every["clean_accuracy"] == 0.0 and not every["class_space"]["restricted"]  # class 500 wins everywhere


def test_the_attacks_run_on_the_restricted_logits(imagenet_a):
    # a larger budget than the logit gaps: PGD fools the right samples, its success over the 4 logits
    report = fastadv.evaluate(ColorLogits(), open_data(str(imagenet_a), input_size=(16, 16)), attacks=["pgd"],
                              eps=[0.5], steps=10, progress=False, workers=0)  # fmt: skip
    row = report["attacks"][0]
    assert row["samples_attacked"] == 3 and row["robust_accuracy"] < RESTRICTED_ACCURACY


def test_a_folder_from_another_class_space_needs_a_class_map(tmp_path):
    pets = _folder(tmp_path / "pets", ["cat", "dog", "fox", "owl"])
    with pytest.raises(ValueError, match=r"class_map: the data's 4 classes \(cat, dog, fox, owl\) cannot be matched"):
        _evaluate(ColorLogits(), pets)
    mapping = dict(zip(["cat", "dog", "fox", "owl"], WNIDS.values(), strict=True))
    report = _evaluate(ColorLogits(), pets, class_map=mapping)
    assert report["clean_accuracy"] == pytest.approx(RESTRICTED_ACCURACY)
    assert report["class_space"]["matched_by"] == "class map"
    with pytest.raises(ValueError, match="class_map: no index for the data's class"):
        _evaluate(ColorLogits(), pets, class_map={"cat": 1})
    with pytest.raises(ValueError, match="class_map: index 1000 lies outside the model's 1000 outputs"):
        _evaluate(ColorLogits(), pets, class_map={**mapping, "owl": 1000})


def test_a_ten_class_folder_against_a_ten_output_model_is_as_before(tmp_path):
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    space = resolve(names, np.arange(10), 10)
    assert (space.how, space.scored, space.model_index.tolist()) == ("identity", None, list(range(10)))
    labels = torch.tensor([3, 0, 9])
    assert space.relabel(labels) is labels
    # folders named by output indices keep them; a subset of them is restricted
    digits = resolve(["3", "5"], np.array([0, 1]), 10)
    assert (digits.how, digits.scored, digits.relabel(torch.tensor([1, 0])).tolist()) == ("indices", [3, 5], [1, 0])


def test_unnamed_labels_outside_the_outputs_are_an_error():
    with pytest.raises(ValueError, match=r"data: labels must lie in \[0, 10\)"):
        resolve(None, np.array([0, 12]), 10)
    with pytest.raises(ValueError, match="class_map: the WordNet IDs n00000001 are not ImageNet-1k classes"):
        resolve(["n01498041", "n00000001"], np.array([0, 1]), 1000)


def test_class_map_files(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"cat": 6, "dog": 11}))
    (tmp_path / "order.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "map.txt").write_text("# name index\ncat 6\n\ndog 11\n")
    (tmp_path / "order.txt").write_text("cat\ndog\n")
    assert read_class_map(tmp_path / "map.json") == read_class_map(str(tmp_path / "map.txt")) == {"cat": 6, "dog": 11}
    assert read_class_map(tmp_path / "order.json") == read_class_map(tmp_path / "order.txt") == {"cat": 0, "dog": 1}
    for text, message in (("cat 6\ndog x\n", "line 2: expected 'name index'"), ("cat 6\ncat 7\n", "given twice"),
                          ('{"cat": -1}', "must be a non-negative integer"), ("{oops", "not valid JSON")):  # fmt: skip
        (tmp_path / "bad").write_text(text)
        with pytest.raises(ValueError, match=message):
            read_class_map(tmp_path / "bad")
    with pytest.raises(TypeError, match="class_map must be"):
        read_class_map(3)


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "m1000.pt"
    torch.jit.save(torch.jit.script(ColorLogits()), str(path))
    return path


@pytest.mark.parametrize(
    "extra, expected",
    [
        ([], "--class-map: the data's 4 classes (cat, dog, fox, owl) cannot be matched to the model's 1000 outputs"),
        (["--class-map", "missing.txt"], "--class-map: cannot read"),
        (["--class-map", "bad.txt"], "--class-map: {bad} line 1: expected 'name index'"),
        (["--class-map", "short.txt"], "--class-map: no index for the data's class(es) dog, fox, owl"),
        (["--class-map", "far.txt"], "--class-map: index 1000 lies outside the model's 1000 outputs"),
    ],
)
def test_class_map_errors_areone_error_line(extra, expected, tmp_path, model_file, capsys):
    pets = _folder(tmp_path / "pets", ["cat", "dog", "fox", "owl"])
    (tmp_path / "bad.txt").write_text("cat 6 7\n")
    (tmp_path / "short.txt").write_text("cat 6\n")
    (tmp_path / "far.txt").write_text("cat 6\ndog 11\nfox 13\nowl 1000\n")
    extra = [str(tmp_path / e) if e.endswith(".txt") else e for e in extra]
    argv = ["eval", "--model", str(model_file), "--data", str(pets), "--input-size", "16", "--out",
            str(tmp_path / "o"), "--quiet", *extra]  # fmt: skip
    line = one_error_line(argv, capsys)
    assert expected.format(bad=tmp_path / "bad.txt") in line, line
    assert not (tmp_path / "o").exists()


def test_cli_scores_imagenet_a_folders_and_all_classes(imagenet_a, tmp_path, model_file):
    common = ["eval", "--model", str(model_file), "--data", str(imagenet_a), "--input-size", "16", "--attacks", "pgd",
              "--eps", "0.001", "--steps", "1", "--quiet", "--no-plots", "--workers", "0"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["clean_accuracy"] == pytest.approx(RESTRICTED_ACCURACY) and report["class_space"]["restricted"]
    assert main([*common, "--all-classes", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "report.json").read_text())["clean_accuracy"] == 0.0


def test_the_demo_shows_and_attacks_the_data_class_space(imagenet_a, tmp_path, model_file, monkeypatch):
    """fastadv demo on ImageNet-A-style folders and a 1000-output model: the page's predictions,
    attacks and curves are over the 4 classes present (as fastadv eval scores them), the labels are
    positions among them and the classes are shown by name; class 500, which wins every image over
    all 1000 outputs, is not on the page."""
    pytest.importorskip("gradio")
    from fastadv.demo.app import Page

    served = []
    monkeypatch.setattr("fastadv.demo.command.serve", lambda explorer, *a, **k: served.append(explorer))
    argv = ["demo", "--model", str(model_file), "--data", str(imagenet_a), "--input-size", "16", "--quiet",
            "--device", "cpu", "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    (explorer,) = served
    assert explorer.classes == 4 and explorer.class_names == list(WNIDS)
    assert explorer.labels.tolist() == [0, 0, 1, 1, 1, 2, 3, 3]  # folder order, positions among the 4
    with torch.no_grad():
        predicted = explorer.model(explorer.images).argmax(1)
    assert (predicted == explorer.labels).float().mean().item() == pytest.approx(RESTRICTED_ACCURACY)
    assert Page(explorer).names == list(WNIDS)
    # the curve tab evaluates what the page holds: the same number fastadv eval gives the folder
    report = fastadv.evaluate(explorer.model, (explorer.images, explorer.labels), attacks=["fgsm"], eps=[0.001],
                              progress=False)  # fmt: skip
    assert report["clean_accuracy"] == pytest.approx(RESTRICTED_ACCURACY)
