"""histokit.evaluation."""
