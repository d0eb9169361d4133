"""The camera edge agent. Never imports torch (tests/unit/test_edge_imports.py proves it)."""
