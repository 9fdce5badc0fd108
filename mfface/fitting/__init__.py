"""The staged fit: stage 1 (landmarks, `landmark_stage`), stage 2 (photometric), stage 3 (per texel)."""
from mfface.fitting.landmark_stage import Stage1Result, fit_landmarks

__all__ = ["Stage1Result", "fit_landmarks"]
