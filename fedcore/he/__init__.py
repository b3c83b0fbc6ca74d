"""Homomorphic encryption: add-only secure aggregation of model updates (TenSEAL; no Flower).

``fedcore.he`` is the public facade: key sets as types (``SecretContext`` for sites,
``PublicContext`` for the coordinator), encrypted updates, parameters and cost estimates.
See ``README.md`` in this folder for parameters, sizes and the threat model.
"""

from fedcore.he.update import *  # noqa: F403
from fedcore.he.update import __all__ as _update_all

__all__ = list(_update_all)
