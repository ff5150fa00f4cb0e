"""tiec test suite."""
