"""Command-line tools on the solver: ``segment`` (scribbles to a mask) and
its ``segment_benchmark``, ``demo`` (the solver on one photo)."""
