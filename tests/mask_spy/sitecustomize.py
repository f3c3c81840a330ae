"""A spy on the masks a script decodes, for tests/test_few_labels.py: with SEGKD_MASK_SPY=FILE in its environment,
every image file whose pixels are decoded (PIL's ImageFile.load, which dataset.py's reader calls; a header read for a
pre-flight does not decode) from a folder named *annot is appended to FILE as 'SCRIPT<TAB>RUN<TAB>PATH', RUN being
the script's --run_name. Put this folder first on PYTHONPATH (test_few_labels.spy_env): Python imports the first
sitecustomize it finds, so this one also runs tests/offline's, and the scripts stay offline."""
import os
import runpy
import sys

runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "offline", "sitecustomize.py"))

LOG = os.environ.get("SEGKD_MASK_SPY")
if LOG:
    from PIL import ImageFile

    _load = ImageFile.ImageFile.load

    def _spied_load(self):
        path = getattr(self, "filename", "") or ""
        if os.path.basename(os.path.dirname(path)).endswith("annot"):
            args = sys.argv
            run = args[args.index("--run_name") + 1] if "--run_name" in args[:-1] else ""
            with open(LOG, "a") as f:
                f.write(f"{os.path.basename(args[0]) if args else ''}\t{run}\t{os.path.abspath(path)}\n")
        return _load(self)

    ImageFile.ImageFile.load = _spied_load
