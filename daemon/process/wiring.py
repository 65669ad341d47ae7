"""How a daemon's parts fit together, written once.

The service, the test fixtures and the test kit's harness all build the same object
graph through :func:`wire`: one change feed, one scheduler over the backends, and the
API on top. What runs it (a socket server and a task group, or a test's ASGI client)
is the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from qjobd.backends.base import Backend
from qjobd.daemon.api.app import Context, create_app
from qjobd.daemon.api.parsing import ParsePool
from qjobd.daemon.config import Config
from qjobd.daemon.engine.notify import BatchChanges
from qjobd.daemon.engine.scheduler import Scheduler
from qjobd.store.store import Store

if TYPE_CHECKING:
    from qjobd.store.cluster import Cluster

__all__ = ["Wired", "wire"]


@dataclass(frozen=True)
class Wired:
    """A daemon's parts, connected, nothing started yet."""

    changes: BatchChanges
    scheduler: Scheduler
    context: Context
    app: Starlette


def wire(config: Config, store: Store, backends: Mapping[str, Backend],
         parser: ParsePool | None = None, cluster: Cluster | None = None) -> Wired:
    """Connect an open store and started backends into a scheduler and an API app.

    The caller runs ``scheduler.run()`` and serves ``app``; on the way out it closes
    ``changes`` first, so that long-polls and event streams end at once. ``parser``: the
    parse workers that check submitted circuits (without, a thread checks them).
    ``cluster``: this node's membership when several daemons share a PostgreSQL store.
    """
    changes = BatchChanges()
    scheduler = Scheduler(store, backends, config.backends, changes, cluster)
    context = Context(config, store, backends, scheduler, changes, parser=parser)
    return Wired(changes, scheduler, context, create_app(context))
