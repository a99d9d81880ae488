"""The compatibility matrix: the pinned grid (grid.toml), its cells' results (results/) and the report."""
