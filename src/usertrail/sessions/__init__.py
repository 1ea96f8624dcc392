"""Sessions: the server's 30-minute / 12-hour rule, identity stitching, and closing sessions."""
