"""Prefect flows, thin: each validates its configuration, runs stages of ``tasks`` (or training of
``modeling``) on Ray and publishes artifacts.

Layer: infra -> **flows** -> modeling -> tasks -> ground. May import ``modeling``, ``tasks`` and the
ground; never ``infra`` (tests/test_layers.py checks).
"""
