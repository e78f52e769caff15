"""Small shared helpers (file checks, logging)."""
