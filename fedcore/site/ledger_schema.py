"""The ledger file's tables (schema version 4): budgets and charges, the plans of two-phase
admission, releases, values released once, the sums a site confirmed (``fedcore.site.sums``) and
the operator's approvals (``fedcore.site.approvals``). Charges, releases and confirmations are
append-only (triggers); a plan never changes but its status; an approval request never changes but
its decision, made once. An older file is migrated by adding the newer tables (``UPGRADES``),
atomically."""

__all__ = ["COLUMNS", "SCHEMA", "SCHEMA_VERSION", "UPGRADES"]

SCHEMA_VERSION = "4"
APPEND_ONLY = """
CREATE TRIGGER {t}_no_update BEFORE UPDATE ON {t} BEGIN SELECT RAISE(ABORT, '{t} are append-only'); END;
CREATE TRIGGER {t}_no_delete BEFORE DELETE ON {t} BEGIN SELECT RAISE(ABORT, '{t} are append-only'); END;
"""
V2_TABLES = """
CREATE TABLE plans (job_id TEXT PRIMARY KEY, digest TEXT NOT NULL, dataset TEXT NOT NULL,
    created TEXT NOT NULL, expires REAL NOT NULL, events_json TEXT NOT NULL, limits_json TEXT NOT NULL,
    summary_json TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'cancelled')));
CREATE TRIGGER plans_fixed BEFORE UPDATE OF job_id, digest, dataset, created, events_json, limits_json,
    summary_json ON plans BEGIN SELECT RAISE(ABORT, 'a plan never changes'); END;
CREATE TRIGGER plans_no_delete BEFORE DELETE ON plans BEGIN SELECT RAISE(ABORT, 'plans are kept'); END;
CREATE TABLE releases (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, kind TEXT NOT NULL,
    round INTEGER NOT NULL, time TEXT NOT NULL, UNIQUE (job_id, kind, round));
CREATE TABLE released_values (dataset TEXT NOT NULL, key TEXT NOT NULL, value REAL NOT NULL,
    event_json TEXT NOT NULL, charged INTEGER NOT NULL, PRIMARY KEY (dataset, key));
""" + APPEND_ONLY.format(t="releases")
V3_TABLES = """
CREATE TABLE confirmations (job_id TEXT NOT NULL, kind TEXT NOT NULL, round INTEGER NOT NULL,
    claim TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (job_id, kind, round));
""" + APPEND_ONLY.format(t="confirmations")
V4_TABLES = """
CREATE TABLE approvals (job_id TEXT PRIMARY KEY, digest TEXT NOT NULL, dataset TEXT NOT NULL,
    requested TEXT NOT NULL, deadline REAL NOT NULL, summary_json TEXT NOT NULL, text TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    decided TEXT NOT NULL DEFAULT '', decided_by TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '');
CREATE TRIGGER approvals_fixed BEFORE UPDATE OF job_id, digest, dataset, requested, deadline, summary_json,
    text ON approvals BEGIN SELECT RAISE(ABORT, 'an approval request never changes'); END;
CREATE TRIGGER approvals_decided_once BEFORE UPDATE ON approvals WHEN OLD.status != 'pending'
    BEGIN SELECT RAISE(ABORT, 'an approval is decided once'); END;
CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals
    BEGIN SELECT RAISE(ABORT, 'approvals are kept'); END;
"""
SCHEMA = (
    """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE budgets (dataset TEXT PRIMARY KEY, epsilon REAL NOT NULL, delta REAL NOT NULL);
CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL,
    job_id TEXT NOT NULL, dataset TEXT NOT NULL, event_json TEXT NOT NULL,
    epsilon REAL NOT NULL, delta REAL NOT NULL, accountant TEXT NOT NULL);
"""
    + APPEND_ONLY.format(t="charges")
    + V2_TABLES
    + V3_TABLES
    + V4_TABLES
)
COLUMNS = {
    "meta": ["key", "value"],
    "budgets": ["dataset", "epsilon", "delta"],
    "charges": ["id", "time", "job_id", "dataset", "event_json", "epsilon", "delta", "accountant"],
    "plans": [
        "job_id", "digest", "dataset", "created", "expires", "events_json", "limits_json", "summary_json",
        "status",
    ],
    "releases": ["id", "job_id", "kind", "round", "time"],
    "released_values": ["dataset", "key", "value", "event_json", "charged"],
    "confirmations": ["job_id", "kind", "round", "claim", "time"],
    "approvals": [
        "job_id", "digest", "dataset", "requested", "deadline", "summary_json", "text", "status", "decided",
        "decided_by", "reason",
    ],
}  # fmt: skip

UPGRADES = {"1": V2_TABLES + V3_TABLES + V4_TABLES, "2": V3_TABLES + V4_TABLES, "3": V4_TABLES}
"""Tables an older schema version lacks, by version."""
