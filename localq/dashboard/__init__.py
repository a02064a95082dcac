"""``python -m localq dashboard``: a live dashboard, a JSON API under Flower's paths, and
Prometheus metrics, served by the standard library.

| module | owns |
|---|---|
| ``views.py`` | what each page and API path returns, as JSON-ready data (and /metrics text) |
| ``server.py`` | HTTP: routing, basic auth, the action token, actions, headers; ``serve()`` |
| ``static/`` | the one page (HTML, JS, CSS): it renders the API's JSON with ``textContent`` |

The store's ``monitor`` module holds the SQL; nothing here speaks SQL. Nothing read
from the file is decoded but JSON: pickled arguments and results are shown as such.
"""
