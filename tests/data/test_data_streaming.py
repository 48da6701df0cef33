"""Streamed data (fastadv.data): CIFAR's python format, image folders read by worker
processes, memory-mapped .npz, images kept uint8 until the device, --limit / --subset /
--shuffle-seed, resume and torchrun sharding on streamed data, bad images. The CLI's one-line
errors for bad folders are rows of app/test_cli.py's CLI_ERRORS."""

import copy
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.reports import assert_same_report, interrupt_at_batch

from fastadv import models
from fastadv.__main__ import main
from fastadv.data import (
    BatchStream,
    CifarSource,
    DataError,
    ImageFolderSource,
    NpzSource,
    Selection,
    load_npz,
    open_data,
    select,
)
from fastadv.evaluation import evaluate

EVAL = dict(attacks=["fgsm", "pgd"], eps=[0.1], steps=2, progress=False)


def _cifar_pickle(obj: dict) -> bytes:
    """`obj` pickled as CIFAR's files are: protocol 2, numpy arrays under numpy 1's module name."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar10(folder, per_batch: int = 6, seed: int = 0):
    """A small cifar-10-batches-py folder in CIFAR-10's exact layout; returns the test split's
    (uint8 [N, 3, 32, 32], labels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(
        _cifar_pickle({"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    )
    test = None
    for file in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {"batch_label": f"{file} of 6", "labels": labels, "data": data,
                 "filenames": [f"img_{i}.png" for i in range(per_batch)]}  # fmt: skip
        (folder / file).write_bytes(_cifar_pickle(batch))
        if file == "test_batch":
            test = (data.reshape(-1, 3, 32, 32), np.asarray(labels))
    return test


def test_cifar10_folder_through_the_cli_equals_the_same_arrays_as_npz(tmp_path, capsys):
    """The acceptance case: a CIFAR-format folder evaluated through the CLI gives the report of
    the same images saved as an .npz."""
    # (the data in a folder of its own: an --out inside an input folder is refused)
    x, y = write_cifar10(tmp_path / "data" / "cifar-10-batches-py", per_batch=12)
    np.savez(tmp_path / "same.npz", x=x, y=y)
    torch.manual_seed(0)
    models.save(models.small_cnn(in_channels=3, num_classes=10, width=8), str(tmp_path / "m.pt"))
    reports = {}
    for name, data in (("cifar", tmp_path / "data"), ("npz", tmp_path / "same.npz")):  # the parent folder works too
        argv = ["eval", "--model", str(tmp_path / "m.pt"), "--data", str(data), "--attacks", "fgsm,pgd", "--eps",
                "0.03", "--steps", "2", "--batch-size", "5", "--workers", "0", "--out", str(tmp_path / name),
                "--no-plots", "--quiet"]  # fmt: skip
        assert main(argv) == 0
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert reports["cifar"]["samples"] == 12
    assert_same_report(reports["cifar"], reports["npz"])


def test_cifar_sources_read_both_splits_and_cifar100(tmp_path):
    x, y = write_cifar10(tmp_path / "c10")
    test = CifarSource(str(tmp_path / "c10"), "test")
    assert (
        test.classes[:2] == ["airplane", "automobile"]
        and len(test) == 6
        and len(CifarSource(str(tmp_path / "c10"), "train")) == 30
    )
    assert test[3].image.dtype == torch.uint8 and torch.equal(test[3].image, torch.from_numpy(x[3]))
    assert test.labels.tolist() == y.tolist()
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    rng = np.random.default_rng(1)
    (c100 / "meta").write_bytes(_cifar_pickle({"fine_label_names": [f"f{i}" for i in range(100)],
                                               "coarse_label_names": [f"c{i}" for i in range(20)]}))  # fmt: skip
    for split, n in (("train", 8), ("test", 4)):
        batch = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split,
                 "fine_labels": list(range(90, 90 + n)), "coarse_labels": [1] * n,
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}  # fmt: skip
        (c100 / split).write_bytes(_cifar_pickle(batch))
    source = open_data(str(tmp_path), "train")  # the folder holding cifar-100-python
    assert isinstance(source, CifarSource) and len(source) == 8 and source.class_count() == 100
    assert source.labels.tolist() == list(range(90, 98))


def test_cifar_unpickler_builds_nothing_but_arrays(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Payload(), "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR pickle \(refused to build (posix|os)\."):
        CifarSource(str(folder))
    assert not (tmp_path / "pwned").exists()
    (folder / "test_batch").write_bytes(_cifar_pickle({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match=r"'data' must be a uint8 array \[N, 3072\]"):
        CifarSource(str(folder))


def write_folder(root, classes=3, per_class=6, size=(20, 24), seed=0):
    """An image folder of random PNGs (one sub-folder per class)."""
    from torchvision.io import encode_png

    generator = torch.Generator().manual_seed(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            image = (torch.rand(3, *size, generator=generator) * 255).to(torch.uint8)
            (root / f"c{c}" / f"{i}.png").write_bytes(encode_png(image).numpy().tobytes())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "set"
    write_folder(root)
    torch.manual_seed(0)
    return root, models.small_cnn(in_channels=3, num_classes=3, width=8).eval()


def test_image_folder_with_0_and_2_workers_gives_one_report(folder):
    root, model = folder
    source = open_data(str(root), input_size=(16, 16))
    reports = [evaluate(model, source, batch_size=5, workers=w, **EVAL) for w in (0, 2)]
    assert_same_report(*reports)
    assert [r["data_loading"]["workers"] for r in reports] == [0, 2]
    assert 0 <= reports[1]["data_loading"]["share_waiting"] <= 1
    # and equal to the same images decoded whole into one tensor
    whole = next(iter(BatchStream(Selection(source), [(0, range(len(source)))], torch.device("cpu"))))
    assert_same_report(reports[0], evaluate(model, (whole.x, whole.y), batch_size=5, **EVAL))


def test_images_stay_uint8_until_the_device(folder, monkeypatch):
    import fastadv.data.loader as loader

    root, model = folder
    seen, real = [], loader._scaled

    def spy(x):
        seen.append(x.dtype)
        out = real(x)
        assert out.dtype == torch.float32 and float(out.max()) <= 1
        return out

    monkeypatch.setattr(loader, "_scaled", spy)
    source = ImageFolderSource(str(root), (16, 16))
    assert source[0].image.dtype == torch.uint8 and source[0].image.shape == (3, 16, 16)
    batches = list(BatchStream(Selection(source), [(0, range(0, 8)), (1, range(8, 18))], torch.device("cpu"), 2))
    assert seen == [torch.uint8, torch.uint8] and [b.x.shape[0] for b in batches] == [8, 10]
    assert torch.equal(batches[0].x[0], source[0].image.float() / 255)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_on_a_gpu_batches_arrive_pinned_and_equal_the_cpu_ones(folder, monkeypatch):
    import fastadv.data.loader as loader

    root, model = folder
    pinned, real_loader = [], torch.utils.data.DataLoader

    class Spying(real_loader):  # records whether each worker batch reached the copy pinned
        def __iter__(self):
            for x, y, bad, first in super().__iter__():
                pinned.append(x.is_pinned() and y.is_pinned())
                yield x, y, bad, first

    monkeypatch.setattr(loader.torch.utils.data, "DataLoader", Spying)
    source = ImageFolderSource(str(root), (16, 16))
    plan = [(0, range(0, 8)), (1, range(8, 18))]
    on_cpu = list(BatchStream(Selection(source), plan, torch.device("cpu"), 2))
    pinned.clear()
    on_gpu = list(BatchStream(Selection(source), plan, torch.device("cuda"), 2))
    assert pinned == [True, True]
    for c, g in zip(on_cpu, on_gpu, strict=True):
        assert g.x.is_cuda and g.x.dtype == torch.float32
        assert torch.equal(g.x.cpu(), c.x) and torch.equal(g.y.cpu(), c.y)
    # a streamed evaluation on the GPU reads the same samples, in the same order, as on the CPU
    reports = [evaluate(m, source, batch_size=5, workers=2, **EVAL) for m in (model, copy.deepcopy(model).cuda())]
    assert reports[0]["samples"] == reports[1]["samples"] and reports[1]["device"] != reports[0]["device"]
    assert abs(reports[0]["clean_accuracy"] - reports[1]["clean_accuracy"]) <= 1 / reports[0]["samples"]


def test_npz_is_memory_mapped_never_loaded_whole(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), rng.integers(0, 5, 40)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    whole = load_npz(str(tmp_path / "plain.npz"))
    for name in ("plain", "packed"):
        source = NpzSource(str(tmp_path / f"{name}.npz"))
        assert isinstance(source.x, np.memmap), name  # a view of the file (or of its decompressed copy)
        assert source.x.filename.endswith("plain.npz" if name == "plain" else "x.npy")
        assert source[7].image.dtype == torch.uint8 and torch.equal(source[7].image.float() / 255, whole[0][7])
        batch = next(iter(BatchStream(Selection(source), [(0, range(40))], torch.device("cpu"))))
        assert torch.equal(batch.x, whole[0]) and torch.equal(batch.y, whole[1])
    scratch = os.path.dirname(source.x.filename)
    del source, batch
    import gc

    gc.collect()
    assert not os.path.exists(scratch), "the decompressed copy goes with the data set"
    np.savez(tmp_path / "big.npz", x=np.full((4, 8, 8), 2.0, np.float32), y=np.zeros(4, int))
    with pytest.raises(DataError, match=r"big.npz: floating x must lie in \[0, 1\]"):
        list(BatchStream(Selection(NpzSource(str(tmp_path / "big.npz"))), [(0, range(4))], torch.device("cpu")))


def test_subset_is_class_balanced_and_seeded_limit_and_shuffle(folder):
    root, _ = folder
    source = ImageFolderSource(str(root))  # 3 classes x 6
    subset = select(source, subset=7)  # drawn with seed 0, kept in the data set's order
    assert np.bincount(subset.labels, minlength=3).tolist() == [3, 2, 2]
    assert list(subset.indices) == sorted(subset.indices)
    assert list(select(source, subset=7).indices) == list(subset.indices)
    drawn = select(source, subset=7, shuffle_seed=2)  # another draw, in a shuffled order
    assert np.bincount(drawn.labels, minlength=3).tolist() == [3, 2, 2]
    assert sorted(drawn.indices) != list(subset.indices) and list(drawn.indices) != sorted(drawn.indices)
    assert list(select(source, subset=7, shuffle_seed=2).indices) == list(drawn.indices)
    assert np.bincount(select(source, subset=18).labels).tolist() == [6, 6, 6]
    assert list(select(source, limit=4).indices) == [0, 1, 2, 3]
    shuffled = select(source, shuffle_seed=5)
    assert sorted(shuffled.indices) == list(range(18)) and list(shuffled.indices) != list(range(18))
    assert list(select(source, shuffle_seed=5, limit=3).indices) == list(shuffled.indices[:3])
    with pytest.raises(ValueError, match="subset: 19 samples asked for, the data has 18"):
        select(source, subset=19)
    with pytest.raises(ValueError, match="workers must be a non-negative integer, got -1"):
        evaluate(folder[1], source, workers=-1, **EVAL)
    # a class with fewer samples than its share gives the rest to the others
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10)
    from fastadv.data.selection import balanced

    assert np.bincount(labels[balanced(labels, 12, 0)]).tolist() == [5, 2, 5]


def test_cli_limit_subset_and_shuffle_seed(folder, tmp_path):
    root, model = folder
    models.save(model, str(tmp_path / "m.pt"))
    samples = {}
    for name, extra in (("limit", ["--limit", "4"]), ("subset", ["--subset", "6", "--shuffle-seed", "3"])):
        argv = ["eval", "--model", str(tmp_path / "m.pt"), "--data", str(root), "--input-size", "16", "--attacks",
                "fgsm", "--eps", "0.1", "--workers", "0", "--out", str(tmp_path / name), "--no-plots", "--quiet",
                *extra]  # fmt: skip
        assert main(argv) == 0
        samples[name] = json.loads((tmp_path / name / "report.json").read_text())["samples"]
    assert samples == {"limit": 4, "subset": 6}


def test_resume_on_streamed_data_gives_the_same_report_and_sees_changed_files(folder, tmp_path, monkeypatch):
    root, model = folder
    source = open_data(str(root), input_size=(16, 16))
    args = dict(batch_size=4, workers=2, **EVAL)
    full = evaluate(model, source, **args)
    state = str(tmp_path / "state.pt")
    interrupt_at_batch(monkeypatch, 3, lambda: evaluate(model, source, state_path=state, **args))
    assert_same_report(evaluate(model, open_data(str(root), input_size=(16, 16)), state_path=state, **args), full)
    with pytest.raises(ValueError, match=r"\(changed: data\)"):  # another resize is other data
        evaluate(model, open_data(str(root), input_size=(12, 12)), state_path=state, **args)
    os.utime(root / "c1" / "2.png", ns=(1, 1))  # a file replaced
    with pytest.raises(ValueError, match=r"\(changed: data\)"):
        evaluate(model, open_data(str(root), input_size=(16, 16)), state_path=state, **args)


def test_bad_images_are_named_or_skipped_and_listed(folder, tmp_path):
    from torchvision.io import encode_jpeg

    root, model = folder
    bad_root = tmp_path / "set"
    write_folder(bad_root, per_class=3)
    jpeg = bytearray(encode_jpeg((torch.rand(3, 20, 24) * 255).to(torch.uint8)).numpy().tobytes())
    huffman = jpeg.find(b"\xff\xc4")
    jpeg[huffman + 4 : huffman + 30] = b"\xff" * 26  # the header reads, the decoder fails
    (bad_root / "c1" / "broken.jpg").write_bytes(jpeg)
    (bad_root / "c2" / "junk.png").write_bytes(b"not a png")  # already the header fails
    with pytest.raises(DataError, match="junk.png: not a readable image"):
        ImageFolderSource(str(bad_root))
    source = ImageFolderSource(str(bad_root), skip_bad=True)
    assert len(source) == 10 and source.skipped[0].startswith(str(bad_root / "c2" / "junk.png"))
    report = evaluate(model, source, batch_size=4, workers=2, **EVAL)
    assert report["samples"] == 9 and len(report["skipped_images"]) == 2
    assert report["skipped_images"][1].startswith(f"{bad_root / 'c1' / 'broken.jpg'}: not a readable image")
    (bad_root / "c2" / "junk.png").unlink()
    models.save(model, str(tmp_path / "m.pt"))
    argv = ["eval", "--model", str(tmp_path / "m.pt"), "--data", str(bad_root), "--attacks", "fgsm", "--eps", "0.1",
            "--workers", "2", "--batch-size", "4", "--no-plots", "--quiet"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert not (tmp_path / "a").exists()
    assert main([*argv, "--out", str(tmp_path / "b"), "--skip-bad-images"]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["samples"] == 9 and report["skipped_images"][0].startswith(str(bad_root / "c1" / "broken.jpg"))


def test_cli_names_the_corrupt_jpeg_in_one_line(tmp_path, capsys, folder):
    from torchvision.io import encode_jpeg

    _, model = folder
    write_folder(tmp_path / "set", per_class=2, size=(16, 16))
    jpeg = bytearray(encode_jpeg((torch.rand(3, 16, 16) * 255).to(torch.uint8)).numpy().tobytes())
    jpeg[jpeg.find(b"\xff\xc4") + 4 : jpeg.find(b"\xff\xc4") + 30] = b"\xff" * 26
    (tmp_path / "set" / "c2" / "z.jpg").write_bytes(jpeg)
    models.save(model, str(tmp_path / "m.pt"))
    capsys.readouterr()
    argv = ["eval", "--model", str(tmp_path / "m.pt"), "--data", str(tmp_path / "set"), "--attacks", "fgsm",
            "--eps", "0.1", "--workers", "2", "--out", str(tmp_path / "out"), "--no-plots", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastadv eval: error: --data: {tmp_path / 'set' / 'c2' / 'z.jpg'}: "
                                               "not a readable image"), err  # fmt: skip


def test_train_streams_an_image_folder(folder, tmp_path):
    root, _ = folder
    argv = ["train", "--data", str(root), "--val-data", str(root), "--input-size", "16", "--recipe", "fgsm-rs",
            "--eps", "0.05", "--epochs", "1", "--batch-size", "8", "--width", "8", "--workers", "2",
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 1 and "robust_accuracy" in history[0]
    assert models.load(str(tmp_path / "run" / "model.pt"))[-1].out_features == 3


_DISTRIBUTED = """
import json, sys, torch, torch.distributed as dist
from fastadv import models
from fastadv.data import open_data
from fastadv.evaluation import evaluate
if sys.argv[3] == "2":
    dist.init_process_group("gloo")
model = models.load(sys.argv[2])
source = open_data(sys.argv[4], input_size=(16, 16))
report = evaluate(model, source, ["fgsm", "pgd"], [0.1], steps=2, batch_size=4, workers=1, progress=False)
if not dist.is_initialized() or dist.get_rank() == 0:
    json.dump(report, open(sys.argv[1], "w"))
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_cpu_ranks_on_a_streamed_folder_give_the_single_process_report(folder, tmp_path):
    root, model = folder
    models.save(model, str(tmp_path / "model.pt"))
    script = tmp_path / "run.py"
    script.write_text(_DISTRIBUTED)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out1, out2 = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(script), str(out1), str(tmp_path / "model.pt"), "1", str(root)], check=True,
                   env=env, timeout=300)  # fmt: skip
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29547",
                    str(script), str(out2), str(tmp_path / "model.pt"), "2", str(root)], check=True, env=env,
                   timeout=300)  # fmt: skip
    single, ranks = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert ranks["settings"]["world_size"] == 2 and ranks["samples"] == single["samples"] == 18
    assert ranks["clean_accuracy"] == single["clean_accuracy"] and ranks["worst_case"] == single["worst_case"]
    for a, b in zip(ranks["attacks"], single["attacks"], strict=True):
        for key in ("robust_accuracy", "success_rate", "f1", "samples_attacked", "samples_fooled"):
            assert a[key] == b[key], key
        # (None: the attack fooled no sample, so there is no mean)
        assert a["mean_l2"] == (None if b["mean_l2"] is None else pytest.approx(b["mean_l2"], rel=1e-9))
