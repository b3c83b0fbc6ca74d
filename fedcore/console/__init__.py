"""The site operator's console: one site's budget, jobs, audit chain and data-use statements.

It reads the ledger and audit log the site's node writes (SQLite, opened ``mode=ro``, safe while a job
runs) and never opens the site's data; its one write is an operator's decision on a job awaiting
approval (``POST /decide``, behind the console's token). ``fedcore console SITE_FILE`` serves it on
127.0.0.1; ``fedcore statement SITE_FILE JOB_ID`` writes one job's data-use statement.
"""

from fedcore.console.app import create_app
from fedcore.console.jobs import JobView, ReleaseView
from fedcore.console.state import BudgetView, ChainView, DatasetBudget, SiteReader, SpendPoint
from fedcore.console.statement import Statement, data_use_statement, statement_html, statement_markdown

__all__ = [
    "BudgetView",
    "ChainView",
    "DatasetBudget",
    "JobView",
    "ReleaseView",
    "SiteReader",
    "SpendPoint",
    "Statement",
    "create_app",
    "data_use_statement",
    "statement_html",
    "statement_markdown",
]
