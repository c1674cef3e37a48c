"""``python -m engine``: the command line.

Large CPU tensors are backed by transparent huge pages (PyTorch's ``THP_MEM_ALLOC_ENABLE``, set
here before torch allocates, unless the caller set it): the bird step allocates decoder-sized
(26 MB) buffers every step, and first-touch page faults on them cost more than the softmax they
hold (BENCHMARKS.md, "Birds step"). MNIST-SVHN steps are unchanged by it.
"""
import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from engine.cli import main  # noqa: E402  (after the environment is set)

sys.exit(main())
