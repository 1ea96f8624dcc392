"""Who may do what: accounts and their roles, sign-in (password, single sign-on), permissions, and the
hash-chained activity log of recording access.

- `permissions.py` the permission catalogue and the role → permission map;
- `accounts.py`    AccountStore: accounts (argon2id), roles per project, sign-in sessions, attempt limits;
- `activity_log.py` the per-project, append-only, hash-chained log of recording views, deletions, exports;
- `oidc.py`        OpenID Connect single sign-on (discovery, code flow with PKCE, ID token validation).

The HTTP side (the principal of a request, CSRF, the `/api/auth/…` routes) is `web/auth.py`.
"""
