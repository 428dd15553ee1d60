"""Per-caller reads admitted from leases of the caller's allowance in Redis, so most reads cost no Redis call.

A process asks Redis for a *lease* of a caller's read allowance (:data:`LEASE_SHARE` of it, at least one
read) and admits that caller's next reads from it in memory until it is spent or its window ends; the
callers waiting for a lease at the same moment are served by one Redis call (:mod:`app.api.coalesce`).
Redis grants no more than the allowance per window, so all processes together never admit more. What a
lease costs: a caller whose reads move between processes may be refused while other processes still hold
unspent reads of its allowance (fewer than one lease each). Once Redis has granted a caller's whole
allowance, the rest of its window is refused in memory, without asking again (a window's count only grows).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from app.api.allowances import CountedAllowance
from app.api.coalesce import Coalescer

# A lease is this fraction of the allowance: 12 reads of the default 1,200 a minute.
LEASE_SHARE = 0.01
# Past this many callers with a lease, leases whose window has ended are dropped.
_PRUNE_AT = 4096


@dataclass
class _Lease:
    left: int  # reads this process may still admit
    ends: float  # time.monotonic() when the window ends
    exhausted: bool  # Redis has granted the caller's whole allowance for this window


class ReadLeases(Coalescer[str, int]):
    """:meth:`admit` a caller's read, from its lease or by asking Redis for one."""

    kind = "read_allowance"

    def __init__(self, allowance: CountedAllowance) -> None:
        super().__init__(max_in_flight=2, max_batch=256)
        self._allowance = allowance
        self._lease_size = max(1, int(allowance.limit * LEASE_SHARE))
        self._leases: dict[str, _Lease] = {}

    async def admit(self, caller: str) -> int:
        """0 when the read may go ahead (also when Redis cannot say: fail open), else the seconds until the
        caller's window ends."""
        lease = self._leases.get(caller)
        if lease is not None:
            remaining = lease.ends - time.monotonic()
            if remaining > 0:
                if lease.left > 0:
                    lease.left -= 1
                    return 0
                if lease.exhausted:
                    return max(1, math.ceil(remaining))
        return await self.submit(caller)

    async def _process(self, items: Sequence[str]) -> Sequence[int]:
        waiting = Counter(items)
        wanted = {caller: max(self._lease_size, count) for caller, count in waiting.items()}
        try:
            grants = await self._allowance.take(wanted)
        except RedisError:
            return [0] * len(items)
        now = time.monotonic()
        if len(self._leases) > _PRUNE_AT:
            self._leases = {caller: lease for caller, lease in self._leases.items() if lease.ends > now}
        for caller, grant in grants.items():
            lease = self._leases.get(caller)
            ends = now + grant.reset_ms / 1000
            # A lease of an earlier window (ended here, or ending while this reply travelled) is not carried over.
            if lease is None or lease.ends <= now or ends - lease.ends > 1.0:
                lease = self._leases[caller] = _Lease(0, ends, False)
            lease.left += grant.granted
            lease.ends = ends
            lease.exhausted = grant.granted < wanted[caller]
        answers = []
        for caller in items:
            lease = self._leases[caller]
            if lease.left > 0:
                lease.left -= 1
                answers.append(0)
            else:
                answers.append(max(1, math.ceil(lease.ends - now)))
        return answers
