"""histokit.retrieval."""
