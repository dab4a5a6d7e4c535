"""Data layer: engine and pools, tables, the hot read path, migrations."""
