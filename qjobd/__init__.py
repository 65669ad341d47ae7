"""qjobd: a restart-safe job-orchestration daemon for quantum circuit batches.

The import namespace of the whole distribution. The repository keeps the design card's
folders at its root; installed, they live here:

- ``qjobd.daemon``   (``daemon/``)   config, engine, HTTP API, process, client library and CLIs
- ``qjobd.backends`` (``backends/``) the plugin surface and the ionq, qoro and local backends
- ``qjobd.store``    (``store/``)    SQLite persistence
- ``qjobd.client``   the client library's public names (``Client``, ...)
- ``qjobd.testing``  the test kit for plugin authors: fakes, harness, conformance suite
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qjobd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
