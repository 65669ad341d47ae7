"""A worked qjobd backend plugin: ``ToyBackend`` for Toy Cloud, a tiny HTTP provider.

- :mod:`qjobd_example_plugin.backend`: the plugin itself, what qjobd loads through the
  ``qjobd.backends`` entry point ``toy``.
- :mod:`qjobd_example_plugin.provider`: Toy Cloud, the provider it talks to, so that the
  example runs anywhere (``python -m qjobd_example_plugin.provider --port 8765``).
"""
