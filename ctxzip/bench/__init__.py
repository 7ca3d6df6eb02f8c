"""ctxzip subpackage."""
