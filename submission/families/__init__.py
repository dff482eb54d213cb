"""Model families: one module each behind the seam in base.py (registry.py names them)."""
