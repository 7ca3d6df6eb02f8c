"""Built-in compressors, one per module, registered by name (see :mod:`ctxzip.registry`)."""
