"""detflow: a seeded task run over seeds x trials as a DVC pipeline that proves its own determinism."""

__version__ = "0.1.0"
