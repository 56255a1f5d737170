"""histokit.models."""
