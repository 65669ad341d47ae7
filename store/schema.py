"""Schema migrations, applied in order; ``PRAGMA user_version`` counts the applied steps.

Append a step to change the schema; never edit a released one.

:data:`POSTGRES_MIGRATIONS` is the same schema for PostgreSQL (store/postgres.py), counted
in its table ``qjobd_schema``: the same tables, columns and indexes under the same names,
in PostgreSQL's types (``DOUBLE PRECISION`` for SQLite's ``REAL`` epoch seconds,
``BOOLEAN`` for its 0/1, identity columns for ``AUTOINCREMENT``), JSON kept as text as
in SQLite (a batch's metadata is returned with the submitter's key order). Its step 1 is
SQLite's steps 1 to 5 at once; from there, a change to one list is a step in both (a test
compares the two schemas column by column).
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE batches (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- list order and cursor
        id               TEXT NOT NULL UNIQUE,
        owner_uid        INTEGER NOT NULL,
        backend          TEXT NOT NULL,
        shots            INTEGER NOT NULL,
        name             TEXT,
        tags             TEXT NOT NULL,                      -- JSON object
        options          TEXT NOT NULL,                      -- JSON object
        timeout          REAL,                               -- seconds, from created_at
        state            TEXT NOT NULL,
        error            TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        idempotency_key  TEXT,
        request_hash     TEXT,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL,
        finished_at      REAL,
        UNIQUE (owner_uid, idempotency_key)
    );
    CREATE INDEX batches_state ON batches (state, seq);
    CREATE INDEX batches_backend ON batches (backend, seq);

    CREATE TABLE jobs (
        id             TEXT PRIMARY KEY,
        batch_id       TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        position       INTEGER NOT NULL,
        backend        TEXT NOT NULL,
        submission_key TEXT NOT NULL UNIQUE,  -- sent with the create; finds it after a crash
        remote_id      TEXT,
        state          TEXT NOT NULL,
        remote_status  TEXT,
        error          TEXT,
        attempts       INTEGER NOT NULL DEFAULT 0,
        poll_interval  REAL,
        next_poll_at   REAL,
        created_at     REAL NOT NULL,
        updated_at     REAL NOT NULL,
        finished_at    REAL
    ) WITHOUT ROWID;
    CREATE INDEX jobs_batch ON jobs (batch_id, position);
    CREATE INDEX jobs_active ON jobs (backend, state)
        WHERE state NOT IN ('completed', 'failed', 'canceled', 'timed_out');

    CREATE TABLE circuits (
        batch_id     TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        label        TEXT NOT NULL,
        position     INTEGER NOT NULL,
        job_id       TEXT NOT NULL,
        source       TEXT NOT NULL,
        qasm_version INTEGER NOT NULL,
        num_qubits   INTEGER NOT NULL,
        num_clbits   INTEGER NOT NULL,
        PRIMARY KEY (batch_id, label)
    ) WITHOUT ROWID;
    CREATE INDEX circuits_job ON circuits (job_id, position);

    CREATE TABLE results (
        batch_id   TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        label      TEXT NOT NULL,
        job_id     TEXT NOT NULL,
        counts     TEXT NOT NULL,  -- JSON object: bitstring -> count
        shots      INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (batch_id, label)
    ) WITHOUT ROWID;

    -- append-only log of state changes; seq is the cursor of GET /v1/events
    CREATE TABLE events (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        ts       REAL NOT NULL,
        batch_id TEXT,
        job_id   TEXT,
        kind     TEXT NOT NULL,
        state    TEXT,
        detail   TEXT  -- JSON object
    );
    CREATE INDEX events_batch ON events (batch_id, seq);
    """,
    # 2: per-batch job counts by state, kept with every move, so a batch's state is
    #    derived from a handful of rows rather than by scanning all of its jobs
    """
    CREATE TABLE batch_job_counts (
        batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        state    TEXT NOT NULL,
        n        INTEGER NOT NULL,
        PRIMARY KEY (batch_id, state)
    ) WITHOUT ROWID;
    INSERT INTO batch_job_counts (batch_id, state, n)
        SELECT batch_id, state, count(*) FROM jobs GROUP BY batch_id, state;
    """,
    # 3: retention (store/retention.py) finds finished batches by age, oldest first,
    #    without visiting the active ones: finished_at is set only on terminal batches
    """
    CREATE INDEX batches_finished ON batches (finished_at) WHERE finished_at IS NOT NULL;
    """,
    # 4: a batch's optional client metadata (a JSON object, NULL when none was given):
    #    what a toolkit adapter needs to rebuild its results in another process, e.g.
    #    qjobd.qiskit's pub layout
    """
    ALTER TABLE batches ADD COLUMN metadata TEXT;
    """,
    # 5: what the daemon could not check in a batch's circuits (a JSON list of sentences,
    #    NULL when it checked everything): e.g. OpenQASM 3 Qiskit cannot import, sent to
    #    a provider that parses it itself
    """
    ALTER TABLE batches ADD COLUMN warnings TEXT;
    """,
]


#: the PostgreSQL schema (see above); ``qjobd_schema.version`` counts the applied steps
POSTGRES_MIGRATIONS: list[str] = [
    # 1: SQLite's steps 1-5, and what several daemons on one database will need
    #    (issue 15): a table of nodes and each job's lease, unused so far
    """
    CREATE TABLE batches (
        seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        owner_uid        BIGINT NOT NULL,
        backend          TEXT NOT NULL,
        shots            BIGINT NOT NULL,
        name             TEXT,
        tags             TEXT NOT NULL,
        options          TEXT NOT NULL,
        timeout          DOUBLE PRECISION,
        state            TEXT NOT NULL,
        error            TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT false,
        idempotency_key  TEXT,
        request_hash     TEXT,
        created_at       DOUBLE PRECISION NOT NULL,
        updated_at       DOUBLE PRECISION NOT NULL,
        finished_at      DOUBLE PRECISION,
        metadata         TEXT,
        warnings         TEXT,
        UNIQUE (owner_uid, idempotency_key)
    );
    CREATE INDEX batches_state ON batches (state, seq);
    CREATE INDEX batches_backend ON batches (backend, seq);
    CREATE INDEX batches_finished ON batches (finished_at) WHERE finished_at IS NOT NULL;

    CREATE TABLE jobs (
        id               TEXT PRIMARY KEY,
        batch_id         TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        position         INTEGER NOT NULL,
        backend          TEXT NOT NULL,
        submission_key   TEXT NOT NULL UNIQUE,
        remote_id        TEXT,
        state            TEXT NOT NULL,
        remote_status    TEXT,
        error            TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        poll_interval    DOUBLE PRECISION,
        next_poll_at     DOUBLE PRECISION,
        created_at       DOUBLE PRECISION NOT NULL,
        updated_at       DOUBLE PRECISION NOT NULL,
        finished_at      DOUBLE PRECISION,
        -- the node that polls the job, until when, and a fencing counter raised at
        -- every claim (not used yet)
        lease_node       TEXT,
        lease_expires_at DOUBLE PRECISION,
        lease_epoch      BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_batch ON jobs (batch_id, position);
    CREATE INDEX jobs_active ON jobs (backend, state)
        WHERE state NOT IN ('completed', 'failed', 'canceled', 'timed_out');

    CREATE TABLE circuits (
        batch_id     TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        label        TEXT NOT NULL,
        position     INTEGER NOT NULL,
        job_id       TEXT NOT NULL,
        source       TEXT NOT NULL,
        qasm_version INTEGER NOT NULL,
        num_qubits   INTEGER NOT NULL,
        num_clbits   INTEGER NOT NULL,
        PRIMARY KEY (batch_id, label)
    );
    CREATE INDEX circuits_job ON circuits (job_id, position);

    CREATE TABLE results (
        batch_id   TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        label      TEXT NOT NULL,
        job_id     TEXT NOT NULL,
        counts     TEXT NOT NULL,
        shots      BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (batch_id, label)
    );

    CREATE TABLE events (
        seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ts       DOUBLE PRECISION NOT NULL,
        batch_id TEXT,
        job_id   TEXT,
        kind     TEXT NOT NULL,
        state    TEXT,
        detail   TEXT
    );
    CREATE INDEX events_batch ON events (batch_id, seq);

    CREATE TABLE batch_job_counts (
        batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
        state    TEXT NOT NULL,
        n        INTEGER NOT NULL,
        PRIMARY KEY (batch_id, state)
    );

    CREATE TABLE nodes (
        name         TEXT PRIMARY KEY,
        started_at   DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        detail       TEXT
    );
    """,
    # 2: a node's leases expire together (store/cluster.py): renewing them is one write to
    #    its row, never a lock on its jobs' rows (which its own writer holds meanwhile)
    """
    ALTER TABLE nodes ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0;
    """,
]
