"""Data: annotations -> conversations -> tokens -> batches."""
