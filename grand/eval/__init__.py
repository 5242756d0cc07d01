"""Evaluation of grounded outputs against grand's exports (GCG: AP50, mIoU, mask recall, METEOR, CIDEr)."""

from grand.eval.gcg import GcgSample, evaluate_gcg, load_samples

__all__ = ["GcgSample", "evaluate_gcg", "load_samples"]
