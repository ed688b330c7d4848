"""``xfm-finetune``: the downstream tasks arrive with the finetune issue; until then this
command says so instead of pretending."""
import sys


def main(argv=None) -> int:
    print("xfm-finetune: no fine-tuning tasks are implemented yet (they come with the finetune issue).",
          file=sys.stderr)
    return 2
