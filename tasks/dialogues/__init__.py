"""Dialogues (system, user and assistant turns) as document-stage records: readers and their ingest stage."""
