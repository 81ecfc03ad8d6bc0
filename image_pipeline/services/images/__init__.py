"""The image generator: its interface (``interface.py``), Hugging Face (``huggingface.py``) and the offline
preview drawn locally (``preview.py``)."""
