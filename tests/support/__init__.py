"""Helpers shared by several test files (imported, never collected: no ``test_`` modules here)."""
