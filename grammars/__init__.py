"""The .tie grammar, shipped as package data (tie.lark)."""
