"""Units of data work: stages and their steps, source readers, curation, token stages.

Layer: infra -> flows -> modeling -> **tasks** -> ground. May import other ``tasks`` modules and the
ground, never ``modeling``, ``flows`` or ``infra`` (tests/test_layers.py checks; its temporary
exceptions say what still does).

The ground lives here too, as modules that import only each other: records (``documents``,
``shards``), storage (``storage``), settings (``settings``) and runtime helpers (``ray_runtime``,
``ports``, ``version``).
"""
