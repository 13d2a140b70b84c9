"""Small shared helpers: atomic file writes, progress bars, seeding, timers."""
