"""Package layer; see the top-level docstring for the import rules."""
