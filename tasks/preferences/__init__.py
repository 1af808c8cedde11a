"""Comparisons (a dialogue context, a chosen and a rejected answer) for reward models: records, readers, ingest and mixtures."""
