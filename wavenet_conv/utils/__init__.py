"""Errors a user can fix, atomic file writes, device choice."""
