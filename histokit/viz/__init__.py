"""histokit.viz."""
