"""Compiler: elaborate the AST into IR, solve sharing, infer shapes, verify, count."""
from .pipeline import compile_source

__all__ = ["compile_source"]
