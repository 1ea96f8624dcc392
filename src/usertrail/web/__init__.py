"""HTTP: the collection endpoints, the admin API and the browser snippet, as one Starlette app."""
