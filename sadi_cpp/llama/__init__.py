"""The only owner of llama-cpp-python: its Llama object and internals, and the engine installed as its eval callback."""
