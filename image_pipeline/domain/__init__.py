"""The bottom layer: what a prompt, a row, a caption, a check and a refusal are, with no Dagster and no I/O.

Everything above imports from here; nothing here imports from above (``test_layers`` holds it). So every
rule about what a row means, what Telegram accepts or whose fault an answer is can be tested on its own.
"""
