"""The server-rendered admin web app (`/app/…`), one module per section.

Pages are Jinja2 templates under `web/templates/` with one base layout (`layout.py`); their scripts and
styles are static files (`/static/app/…`, vendored libraries under `/static/vendor/…`), so every page runs
under a CSP without inline script or style. Pages read through the same stores as the API and check the
same permissions (`web/auth.py`); whatever a page changes, it changes by calling the public JSON API from
its script, so nothing the UI does is out of the API's reach.
"""

from __future__ import annotations

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from usertrail.web.pages import (
    activity,
    home,
    install,
    integrations,
    overview,
    recordings,
    reports,
    segments,
    settings,
    users,
)
from usertrail.web.pages.layout import WEB

routes = [
    *home.routes,
    *recordings.routes,
    *segments.routes,
    *reports.routes,
    *integrations.routes,
    *activity.routes,
    *overview.routes,
    *settings.routes,
    *install.routes,
    *users.routes,
    Mount("/static", app=StaticFiles(directory=WEB / "static"), name="static"),
]
