"""``python -m xfm.pretrain``: the same command as ``xfm-pretrain`` (``xfm.pretrain.cli``)."""
import sys

from xfm.pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
