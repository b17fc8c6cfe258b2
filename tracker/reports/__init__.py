"""Patient and cohort reports: figures (matplotlib, Agg) as pure functions of plain data, and the HTML page.

Nothing here reads the database: :mod:`tracker.workflows.reports` gathers the data (``db/reports.py``) and calls
these functions. :mod:`tracker.reports.snapshots` reads images and transforms from paths it is given.
"""
