"""The root of every error qjobd raises on purpose.

Each layer translates what fails below it into its own subclass at its boundary
(``raise ... from exc``), so ``except QjobdError`` catches every failure qjobd means to
report, and nothing else::

    QjobdError
    ├── ConfigError            qjobd.daemon.config: the configuration is invalid
    ├── BackendError           qjobd.backends.errors: a backend failed
    │   ├── Unavailable        the provider could not answer now: retry later
    │   │   └── RateLimited    429: pause the whole backend for retry_after
    │   ├── Rejected           the provider refused the request itself: never retry
    │   ├── AuthError          the credentials were refused
    │   └── ProtocolError      an answer this backend does not understand
    ├── UnknownBackendType     qjobd.backends.registry: no installed backend has the type
    ├── QasmError              qjobd.backends.qasm: a circuit cannot be parsed or converted
    │   └── OverLimit          over a backend's limit: qubits, classical bits, operations
    ├── QHError                qjobd.backends.qh: a Qoro histogram is malformed
    ├── StoreError             qjobd.store.errors: the store failed
    │   ├── StoreUnavailable   the database cannot take writes now
    │   │   └── DiskFull       no space left for the write
    │   ├── CorruptDatabase    the file failed its integrity check
    │   ├── SchemaTooNew       the file was written by a newer qjobd
    │   ├── NotFound           no such batch
    │   └── IdempotencyConflict  the key was used before with another body
    ├── IllegalTransition      qjobd.store.states: a move the state machine forbids
    │   └── JobEnded           the job had ended meanwhile (a cancel, a timeout)
    ├── ErrorAnswer            qjobd.daemon.api.app: an HTTP error answer (status, code)
    ├── BodyError              qjobd.daemon.api.jsonbody: a body not taken as JSON (400)
    ├── InvalidRequest         qjobd.daemon.api.validation: a malformed submission (400)
    ├── InvalidCircuits        qjobd.daemon.api.validation: invalid OpenQASM (422)
    │   └── CircuitsTooLarge   over a size limit: operations, parser memory, time (413)
    ├── ParsePoolClosed        qjobd.daemon.api.parsing: the parse workers are stopping
    ├── WorkerDied             qjobd.daemon.api.parsing: a parse worker died in a task
    ├── SocketInUse            qjobd.daemon.api.server: another qjobd serves there
    ├── ActivationError        qjobd.daemon.process.systemd: unusable inherited sockets
    ├── CoreTaskFailed         qjobd.daemon.process.service: a core task ended
    └── ClientError            qjobd.daemon.client (qjobd.client): a client call failed
        ├── ApiError           the daemon answered with an error
        ├── DaemonUnreachable  no daemon on the socket
        │   └── DaemonTimeout  the daemon did not answer in time
        ├── SocketConfigError  the config file naming the socket is missing or invalid
        ├── BatchFailed        wait(): the batch ended failed, canceled or timed_out
        ├── BatchTimeout       wait(): its timeout passed before the batch ended
        └── UsageError         qjobctl: bad local input, nothing sent
            └── ArgumentsRejected  qjobctl: a command line argparse refused
"""

from __future__ import annotations

__all__ = ["QjobdError"]


class QjobdError(Exception):
    """qjobd failed."""
