"""The `llamaline` command line (``cli``) and the local stack (``stack``), plus setup scripts.

Layer: **infra** -> flows -> modeling -> tasks -> ground, the top. May import every layer; nothing
imports it (tests/test_layers.py checks).
"""
