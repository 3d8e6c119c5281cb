"""Builders shared by several test modules (imported as ``helpers.<module>``; test modules never import each other)."""
