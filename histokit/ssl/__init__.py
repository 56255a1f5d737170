"""histokit.ssl."""
