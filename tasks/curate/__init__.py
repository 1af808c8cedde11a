"""Curation steps and stages: dedup, filters, quality, PII."""
