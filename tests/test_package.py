"""The package installs under one import root and its parts import from outside the repo."""
import os
import subprocess
import sys


def test_import_roots_from_outside_repo(tmp_path):
    code = ("import xfm, xfm.kernels, xfm.data_prep, xfm.pretrain, xfm.finetune, xfm.config;"
            "print(xfm.kernels.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert os.path.join("kernels", "__init__.py") in out.stdout
