"""Collection: HTTP intake of WalkMe and native events, validation, traffic rules and the write path."""
