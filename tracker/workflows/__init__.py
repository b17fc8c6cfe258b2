"""Use cases: the only tracker code that opens database sessions.

Each module is one thing a user does (ingest, process, rescore, locate, recist targets, harmonisation, risk
models, reading timelines, the database itself). A driver (the CLI, a cluster task, a server) parses its input,
calls one function here and renders the result; the computation lives in the pure modules of `tracker/` and
`registration/`, the SQL in `db/`.
"""
