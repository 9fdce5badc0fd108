"""mfface: face reconstruction from photos by differentiable inverse rendering (Mitsuba 3 + PyTorch).

Subpackages: `mfface.morphable` (morphable models), `mfface.scenes` (everything Mitsuba),
`mfface.cli` (the `mfface` command). The method itself lives in this package's modules.
"""
import os

# Torch's OpenMP threads spin after each op by default and take CPU time from Dr.Jit's threads on
# the same cores (measured: about 0.13 CPU-s per render iteration, bench/RESULTS.md). Only takes
# effect when mfface is imported before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
