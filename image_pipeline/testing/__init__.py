"""What exercises the product, apart from it: the loopback emulators of the three services, the sandbox
that serves them, the chaos harness and the benchmark.

The product never imports this package (``image_pipeline_tests/test_layers.py`` holds that); this package
may import anything of the product, since it drives the product's real clients and its real CLI.
"""
