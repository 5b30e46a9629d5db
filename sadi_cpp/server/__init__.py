"""``sadi-cpp serve``: an OpenAI-compatible HTTP server whose requests choose their own steering (optional extra ``[server]``)."""
