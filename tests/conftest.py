"""Shared test set-up. Environment first: TRITON_INTERPRET must be set before triton is imported
(so the kernel tests run the Triton code on CPU), and one thread per process keeps the 2-rank
DeepSpeed tests from fighting over 2 cores. ``auto`` kernels on CPU still take the torch reference.

Fixtures live in one module per area (``fixtures_*.py`` beside this file), registered here.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = [name[:-3] for name in sorted(os.listdir(os.path.dirname(__file__)))
                  if name.startswith("fixtures_") and name.endswith(".py")]
