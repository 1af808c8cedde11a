"""One reader module per source format."""
