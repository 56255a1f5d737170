"""histokit.stages."""
