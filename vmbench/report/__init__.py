"""Reports over the store: leaderboards, run details, exports. Read-only; never imports torch."""
