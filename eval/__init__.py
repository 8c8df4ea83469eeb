"""Quality evaluation: retrieval, answers and SQL, scored and written up as reports.

``kb eval retrieval|answers|sql`` drive these; each evaluation takes the assistant's own search,
ask or agent call, so what is measured is what users get. ``report`` writes the Markdown and
the PNG plots. The scripts beside them (``abstention.py``, ``sql_agent.py``) are the
calibration and comparison runs recorded in docs/benchmarks.md.
"""
