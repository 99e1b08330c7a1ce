"""mmit: multimodal instruction tuning."""

import os

# OpenMP threads that sleep while they wait, unless the user chose otherwise. Spinning waiters
# cost nothing on an idle CPU but slow a step down when anything else wants a core: mmit's own
# prefetch thread, the other processes of a CPU torchrun, another job. Read when torch loads its
# OpenMP runtime, so it only applies if mmit is imported first (as `python -m mmit.*` does).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.1"
