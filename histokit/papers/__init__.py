"""histokit.papers."""
