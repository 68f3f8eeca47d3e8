"""tenant-reconciler: keep a fleet of per-tenant SQLite databases in the declared state."""

__version__ = "0.1.0"
