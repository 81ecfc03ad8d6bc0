"""One package per external system, each with its interface and every backend in its own module:
``sheets/`` (the queue), ``images/`` (the generator), ``publisher/`` (the channel), and ``http.py``, the
transport seam they share. Services know nothing of a prompt's lifecycle; ``lifecycle/`` calls them.
"""
