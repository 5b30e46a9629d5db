"""``sadi-cpp serve``: an OpenAI-compatible HTTP server whose requests choose their own steering.

Needs the optional extra: ``pip install 'sadi-cpp[server]'`` (FastAPI and uvicorn).
"""
