"""Using a trained student: predict.py on awkward files, export.py's round trips, and the checks that must fail."""
import csv
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import export
import model
import utils
from conftest import ROOT, run_cli
from dataset import VOC, DatasetError
from predict import list_inputs, read_image, upsample_argmax

rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One compute thread per process: on a shared 2-core machine two OpenMP threads wait on each other at every op
    (one export.py run: 44 s with 2 threads, 11 s with 1, at load 8)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained light student saved as train.py saves one (trained at 32 px). Its BatchNorm statistics are
    those of random images, so that its masks are not one class everywhere and its logits are a few units large;
    variances below 0.01 are raised to it, as a network that never trained leaves channels with none, and folding
    such a BatchNorm multiplies float32 rounding by up to 1/sqrt(eps) ~ 300 (a trained one did not: 8e-7)."""
    torch.manual_seed(0)
    net = model.build_model("light", 21)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        net(torch.randn(4, 3, 32, 32))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.clamp_(min=0.01)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_best.pth"
    utils.save_checkpoint({"model": net.state_dict(), "model_name": "light", "num_classes": 21, "dataset": "voc",
                           "epoch": 0, "args": {"img_size": [32]}}, str(path))
    return str(path)


def odd_images(folder):
    """Every kind of file predict.py must cope with -> {file name: (width, height) of its mask, None if unreadable}."""
    os.makedirs(folder)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "colour.jpg")
    Image.fromarray(rng.integers(0, 256, (33, 50), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 20, 4), dtype=np.uint8)).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (36, 44), dtype=np.uint16)).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode == "I;16"
    rotated = Image.fromarray(rng.integers(0, 256, (24, 56, 3), dtype=np.uint8))  # stored 56 wide, 24 high
    exif = rotated.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display, so it shows 24 wide, 56 high
    rotated.save(folder / "rotated.jpg", exif=exif)
    whole = (folder / "colour.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    (folder / "notes.txt").write_text("not an image\n")
    return {"colour.jpg": (48, 40), "gray.png": (50, 33), "rgba.png": (20, 30), "deep.png": (44, 36),
            "rotated.jpg": (24, 56), "truncated.jpg": None, "notes.txt": None}


def test_predict_on_odd_files(checkpoint, tmp_path):
    expected = odd_images(tmp_path / "photos")
    extra = tmp_path / "single.png"  # a file argument next to a folder argument
    Image.fromarray(rng.integers(0, 256, (64, 17, 3), dtype=np.uint8)).save(extra)
    expected["single.png"] = (17, 64)
    out = tmp_path / "out"
    proc = run_cli([os.path.join(ROOT, "predict.py"), "--weights", checkpoint, str(tmp_path / "photos"), str(extra),
                    "--out", str(out), "--batch_size", "4"], tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for bad in ("truncated.jpg", "notes.txt"):
        assert f"skipped {tmp_path / 'photos' / bad}" in proc.stderr
    assert "2 of 8 files skipped" in proc.stderr
    assert "network at 32x32" in proc.stdout  # the checkpoint's training size

    good = {os.path.splitext(f)[0]: size for f, size in expected.items() if size}
    assert sorted(os.listdir(out)) == ["class_shares.csv", "masks", "overlays"]
    assert sorted(os.listdir(out / "masks")) == sorted(f"{n}.png" for n in good)
    assert sorted(os.listdir(out / "overlays")) == sorted(f"{n}.png" for n in good)
    voc_palette = [v for rgb in VOC.palette for v in rgb]
    with open(out / "class_shares.csv", newline="") as f:
        rows = {os.path.splitext(os.path.basename(r["image"]))[0]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(good)
    classes_seen = set()
    for name, size in good.items():
        mask = Image.open(out / "masks" / f"{name}.png")
        assert mask.mode == "P" and mask.size == size, name
        assert mask.getpalette()[:len(voc_palette)] == voc_palette
        overlay = Image.open(out / "overlays" / f"{name}.png")
        assert overlay.mode == "RGB" and overlay.size == size
        ids = np.asarray(mask)
        assert ids.max() < 21
        classes_seen |= set(np.unique(ids).tolist())
        shares = np.array([float(rows[name][c]) for c in VOC.class_names])
        assert (int(rows[name]["width"]), int(rows[name]["height"])) == size
        np.testing.assert_allclose(shares, np.bincount(ids.ravel(), minlength=21) / ids.size, atol=1e-6)
    assert len(classes_seen) > 1  # a network that predicts one class everywhere would hide a broken resize


def test_read_image_16_bit_alpha_and_exif(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 8).astype(np.uint16).reshape(8, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = read_image(tmp_path / "deep.png")
    assert rgb.shape == (8, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.round(ramp / 257).astype(np.uint8))  # not clipped at 255

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (10, 20, 30, 255)  # top half opaque, bottom half fully transparent black
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    rgb = read_image(tmp_path / "cut.png")
    assert (rgb[:2] == (10, 20, 30)).all() and (rgb[2:] == 255).all()

    im = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (30, 10, 3)


def test_upsample_argmax_is_interpolate_then_argmax():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 9)
    for size in ((23, 31), (7, 9), (3, 40)):
        want = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        # a band budget of 2 rows at a time exercises the banding
        got = upsample_argmax(logits, size, band_bytes=4 * 5 * size[1] * 2)
        np.testing.assert_array_equal(got, want)


def test_inputs_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match="no such file"):
        list_inputs([str(tmp_path / "missing.jpg")], str(tmp_path / "out"))
    with pytest.raises(DatasetError, match="holds no files"):
        list_inputs([str(tmp_path / "a")], str(tmp_path / "out"))
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "b" / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="would both write x.png"):
        list_inputs([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))


def test_predict_bad_checkpoint_is_one_message(tmp_path):
    (tmp_path / "bad.pth").write_text("not a checkpoint")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    proc = run_cli([os.path.join(ROOT, "predict.py"), "--weights", str(tmp_path / "bad.pth"), str(tmp_path / "a.png"),
                    "--out", str(tmp_path / "out")], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "bad.pth" in proc.stderr and "Traceback" not in proc.stderr


def tamper_onnx(src, dst):
    import onnx

    proto = onnx.load(src)
    init = next(i for i in proto.graph.initializer if len(i.dims) == 4)  # the first convolution's weight
    weight = onnx.numpy_helper.to_array(init) * 1.5
    init.CopyFrom(onnx.numpy_helper.from_array(weight, init.name))
    onnx.save(proto, dst)


def test_export_onnx_round_trip_and_a_tampered_file_fails(checkpoint, tmp_path):
    import onnx

    path = str(tmp_path / "student.onnx")
    proc = run_cli([os.path.join(ROOT, "export.py"), "--weights", checkpoint, "--format", "onnx", "--img_size", "32",
                    "--out", path, "--num_inputs", "2", "--runs", "2"], tmp_path)
    assert "parity: OK" in proc.stdout and "ONNX Runtime" in proc.stdout
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    assert '"background"' in meta["segkd"] and '"img_size": [32, 32]' in meta["segkd"]
    assert not os.path.exists(path + ".data")  # one self-contained file

    tamper_onnx(path, str(tmp_path / "tampered.onnx"))
    proc = run_cli([os.path.join(ROOT, "export.py"), "--weights", checkpoint, "--check_only",
                    str(tmp_path / "tampered.onnx"), "--img_size", "32", "--num_inputs", "1", "--runs", "1"], tmp_path,
                   check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "parity: FAILED" in proc.stdout and "Traceback" not in proc.stderr
    with pytest.raises(export.ExportError, match="takes 32x32 images"):  # a static file at another size
        export.load_exported(path, "onnx", (48, 48), dynamic=False)
    with pytest.raises(export.ExportError, match="exported without --dynamic"):
        export.load_exported(path, "onnx", (32, 32), dynamic=True)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_torchscript_dynamic_round_trip_and_a_tampered_file_fails(checkpoint, tmp_path):
    path = str(tmp_path / "student.pt")
    # 96 px, and a second size, 193x195: a trace at one size must compute the same function at another.
    proc = run_cli([os.path.join(ROOT, "export.py"), "--weights", checkpoint, "--format", "torchscript",
                    "--img_size", "96", "--dynamic", "--out", path, "--num_inputs", "1", "--runs", "2"], tmp_path)
    assert "parity: OK" in proc.stdout and "2x3x193x195" in proc.stdout and "TorchScript" in proc.stdout

    module = torch.jit.load(path)
    with torch.no_grad():
        next(p for n, p in module.named_parameters() if n.startswith("decoder")).mul_(1.5)
    torch.jit.save(module, str(tmp_path / "tampered.pt"))
    args = export.get_args_parser().parse_args(["--weights", checkpoint, "--check_only", str(tmp_path / "tampered.pt"),
                                                "--img_size", "32", "--num_inputs", "1", "--runs", "1"])
    result = export.main(args)
    assert not result["ok"] and result["max_rel_diff"] > 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_earlier_checkpoints_load_in_test_predict_and_export(synthetic_root, tmp_path):
    """Files written before the one training state (a feature-KD RUN_last.pth of that layout: its alignment convs
    under 'criterion' as 'convs.*', optimizer and RNG beside) and the original project's state dict both load in
    test.py, predict.py and export.py, and give the network they hold."""
    import original
    import predict
    import test as test_script

    torch.manual_seed(1)
    net = model.build_model("light", 21).eval()
    legacy = {"model_name": "light", "num_classes": 21, "dataset": "voc", "mode": "feature",
              "teacher_arch": "fcn_resnet50", "args": {"img_size": [32], "kd_method": "feature"},
              "model": net.state_dict(), "criterion": {f"convs.{i}.weight": torch.zeros(8, c, 1, 1)
                                                       for i, c in enumerate((24, 32, 1280))},
              "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": None, "scaler": {},
              "early_stopping": {"best": 0.1, "bad_epochs": 0, "monitor": "miou"}, "epoch": 4, "best_miou": 0.1,
              "history": [], "rng": utils.rng_state(), "finished": True}
    utils.save_checkpoint(legacy, str(tmp_path / "feature_last.pth"))
    torch.save(original.OriginalLight().state_dict(), tmp_path / "feature_kd_best.pth")
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    x = torch.randn(1, 3, 32, 32)
    for name in ("feature_last.pth", "feature_kd_best.pth"):
        path = str(tmp_path / name)
        loaded, _ = model.load_trained(path)
        if name == "feature_last.pth":
            torch.testing.assert_close(loaded(x), net(x))
        args = test_script.get_args_parser().parse_args(
            ["--weights", path, "--root_dir", synthetic_root, "--img_size", "32", "--num_workers", "0",
             "--no_progress", "--num_vis", "0", "--results_csv", str(tmp_path / f"{name}.csv")])
        test_script.main(args)
        with open(tmp_path / f"{name}.csv") as f:
            assert 0 <= float(next(csv.DictReader(f))["mIoU_with_ignore"]) <= 1
        out = predict.main(predict.get_args_parser().parse_args(
            [str(tmp_path / "a.png"), "--weights", path, "--out", str(tmp_path / f"pred_{name}"), "--img_size", "32",
             "--no_progress"]))
        assert len(out["written"]) == 1 and not out["failed"]
        result = export.main(export.get_args_parser().parse_args(
            ["--weights", path, "--format", "torchscript", "--img_size", "32", "--out", str(tmp_path / f"{name}.pt"),
             "--num_inputs", "1", "--runs", "1"]))
        assert result["ok"]
