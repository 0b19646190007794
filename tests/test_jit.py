"""Functions whose cost estimates cross jit_above_cost on small data turn JIT off for
themselves (0022, 0026, 0027): on a server with JIT on (Debian's packages) every call compiled
its query, for nothing. Measured on Debian PG 15: billing.transactions 1-2 s a page (200 s
for a walk that takes 3 s without JIT); billing.verify_ledger 25-220 ms a call for under
1 ms of work (15.8 s of one suite run); pyglue.sync_status 6-30 ms a call;
pyglue.sequence_changes, whose seq scans are off (0027), 85 ms a pass for its one-row
fusebox and lock tables."""

from __future__ import annotations

import pytest

WITHOUT_JIT = ["billing.transactions", "billing.verify_ledger", "pyglue.sync_status", "pyglue.sequence_changes"]


@pytest.mark.parametrize("function", WITHOUT_JIT)
def test_the_function_turns_jit_off_for_itself(conn, function):
    configs = conn.execute("select p.proconfig from pg_proc p where p.oid::regproc::text = %s",
                           (function,)).fetchall()
    assert len(configs) == 1, f"{function}: {len(configs)} functions of that name"
    assert "jit=off" in configs[0]["proconfig"]
