"""REST API and web page (`ferlab serve`): the 'serve' extra.

Its packages are checked here, before `app` imports them, so that a core-only install stops on one line that
names the extra (pip install 'ferlab[serve]') rather than a traceback from inside FastAPI.
"""
from .._optional import need

need("fastapi", "serve", "ferlab serve")
need("python_multipart", "serve", "ferlab serve")  # FastAPI parses File() uploads with it
