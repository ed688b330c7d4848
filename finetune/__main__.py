import sys

from xfm.finetune.cli import main

sys.exit(main())
