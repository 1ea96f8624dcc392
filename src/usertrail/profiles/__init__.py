"""The End User Object: standard attributes computed from closed sessions."""
