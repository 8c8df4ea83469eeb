"""Tools for the agent; ``sql`` is the safety core of ``run_sql`` (checks, read-only runs)."""
