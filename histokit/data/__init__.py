"""histokit.data."""
