"""histokit.train."""
