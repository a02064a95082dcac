"""``python -m localq dashboard``: a live dashboard, a JSON API under Flower's paths, and
Prometheus metrics, served by the standard library.

| module | owns |
|---|---|
| ``views.py`` | what each page and API path returns, as JSON-ready data (and /metrics text) |
| ``server.py`` | HTTP: routing, basic auth, the action token, actions, headers; ``serve()`` |
| ``static/`` | the one page (HTML, JS, CSS): it renders the API's JSON with ``textContent`` |

The store's ``monitor`` module holds the SQL; nothing here speaks SQL. Arguments and
results are shown decoded only when they are JSON: pickled ones are shown as such.
"""
