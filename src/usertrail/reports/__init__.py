"""Reports computed from the stored events (engagement with WalkMe content: docs/reports.md)."""
