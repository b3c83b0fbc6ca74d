"""The one error hierarchy of fedcore.

Every message says what is wrong, the value found, and how to fix it::

    FedcoreError
    ├── ConfigError            a job, site or app file is missing, malformed or inconsistent
    │   ├── UnknownNameError   a job names an aggregator/model/mode that is not registered
    │   └── SchemaError        a data file or site schema does not match (columns, types, labels)
    │       └── DataError      a data file cannot be parsed (row, column and value named)
    ├── UpdateError            a site's reply is malformed (shape, dtype, non-finite, norm bound)
    ├── JobStoppedError        a checkpointed job stopped early; `fedcore resume RUN` continues it
    ├── AggregationError       an aggregator was given input it cannot aggregate (empty, mixed shapes)
    ├── PrivacyError           a privacy plug-in refused or failed
    │   ├── BudgetExceededError    the site's budget cannot cover the planned work (nothing was run)
    │   ├── LedgerError            the ledger is unreadable or corrupt (fails closed)
    │   ├── AuditError             the audit log is broken (edited, removed or reordered records)
    │   ├── PolicyError            a request would loosen the site's privacy policy
    │   │   └── ApprovalPendingError   the site's operator has not decided yet (manual approval)
    │   └── SecAggError            a secure-aggregation message is refused (not a member, bad signature,
    │                              inconsistent survivor set, replay) or the round cannot complete
    └── KeyMismatchError       HE keys are missing, wrong, or from another key set
        └── CiphertextError    a ciphertext is truncated, tampered with, or undecodable
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "ApprovalPendingError",
    "AuditError",
    "BudgetExceededError",
    "CiphertextError",
    "ConfigError",
    "DataError",
    "FedcoreError",
    "JobStoppedError",
    "KeyMismatchError",
    "LedgerError",
    "PolicyError",
    "PrivacyError",
    "SchemaError",
    "SecAggError",
    "UnknownNameError",
    "UpdateError",
]


class FedcoreError(Exception):
    """Root of every error fedcore raises on purpose."""


class ConfigError(FedcoreError):
    """A job, site or app file is missing, malformed or inconsistent."""


class UnknownNameError(ConfigError):
    """A name (aggregator, model, mode) is not registered; the message lists the known ones."""


class SchemaError(ConfigError):
    """A data file or a site's schema does not match what is declared or what other sites use."""


class DataError(SchemaError):
    """A data file cannot be parsed; the message names the file, row and column."""


class UpdateError(FedcoreError):
    """A site's update is malformed: wrong shape or dtype, non-finite, or over the norm bound."""


class JobStoppedError(FedcoreError):
    """A job stopped after a checkpointed round; the sites keep its plan, so it can be resumed."""


class AggregationError(FedcoreError):
    """An aggregator was given input it cannot aggregate."""


class PrivacyError(FedcoreError):
    """A privacy plug-in refused the work or failed."""


class BudgetExceededError(PrivacyError):
    """The planned work does not fit in the site's remaining privacy budget; nothing was run."""


class LedgerError(PrivacyError):
    """The privacy ledger is unreadable or corrupt; fedcore fails closed and runs nothing."""


class AuditError(PrivacyError):
    """The audit log's hash chain is broken: a record was edited, removed or reordered."""


class PolicyError(PrivacyError):
    """A request would loosen the site's privacy policy (values from the coordinator may only tighten)."""


class ApprovalPendingError(PolicyError):
    """The site admits this job only once its operator approves it (``[node] approval = "manual"``);
    not yet refused: ask again later. A caller that does not know it reads it as a refusal."""


class SecAggError(PrivacyError):
    """A secure-aggregation message is refused or the round cannot complete; nothing was revealed."""


class KeyMismatchError(FedcoreError):
    """HE keys are missing, wrong, or belong to another key set."""


class CiphertextError(KeyMismatchError):
    """A ciphertext is truncated, tampered with, or cannot be decoded with this key set."""
