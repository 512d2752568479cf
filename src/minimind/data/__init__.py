"""Data: demo data, formats and validation, prepared shards, loaders, cleaning."""
