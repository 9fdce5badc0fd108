"""mfface: face reconstruction from photos by differentiable inverse rendering (Mitsuba 3 + PyTorch).

Subpackages: `mfface.morphable` (morphable models), `mfface.scenes` (everything Mitsuba),
`mfface.cli` (the `mfface` command). The method itself lives in this package's modules.
"""
__version__ = "0.1.0"
