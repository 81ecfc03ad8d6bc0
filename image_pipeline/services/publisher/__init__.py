"""The publisher: its interface (``interface.py``), the Telegram Bot API (``telegram.py``), the local outbox
folder (``outbox.py``) with its gallery page (``gallery.py``), and the per-chat pacing (``pacing.py``)."""
