"""The tests run offline: torchvision's weights come through torch.hub.download_url_to_file, and here it refuses.

Python imports a module named sitecustomize at start-up when one is on its path, so conftest.cli_env puts this folder
on PYTHONPATH and every script a test starts (train.py, train_kd.py, experiments.py and the scripts it starts) runs
offline; conftest imports it too, for the tests' own process. A file already in the hub cache still loads: only the
download is refused, at once, as on a machine without internet. The code users run holds no switch for this."""
import torch.hub


def _refuse(url, *args, **kwargs):  # noqa: ARG001 - download_url_to_file's signature
    raise ConnectionError(f"offline (tests/offline/sitecustomize.py): no download of {url}")


torch.hub.download_url_to_file = _refuse
