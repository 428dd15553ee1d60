"""RQ entry points and the per-pose pipeline."""
