"""Segments: a rule tree over End User Objects and stored events, evaluated in SQL and in process.

`model` parses and validates a rule tree against a project's attribute catalogue; `sql` compiles it
to a query over `end_users` (lists and counts); `evaluate` checks one user in process, with a
per-rule explanation; `membership` keeps saved segments' member lists and entered/left history.
"""
