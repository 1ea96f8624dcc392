"""Enrichment: facts derived from the request (client IP, geolocation, user agent)."""
