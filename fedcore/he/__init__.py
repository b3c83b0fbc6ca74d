"""Homomorphic encryption: add-only secure aggregation of model updates (TenSEAL; no Flower).

``fedcore.he`` is the public facade: key sets as types (``SecretContext`` for sites,
``PublicContext`` for the coordinator), encrypted updates, parameters and cost estimates.
See ``README.md`` in this folder for parameters, sizes and the threat model.
"""

from fedcore.he.ciphertext import EncryptedUpdate
from fedcore.he.cost import HECostEstimate, estimate_cost
from fedcore.he.keys import (
    PublicContext,
    SecretContext,
    generate_keyset,
    init_keys,
    load_public_context,
    load_secret_context,
    save_keyset,
    save_public,
    save_secret,
)
from fedcore.he.params import DEFAULT_PARAMS, NVFLARE_DEFAULT_PARAMS, Encryption, HEParams, Scheme
from fedcore.he.update import (
    RunningSum,
    check_loadable,
    decrypt_integers,
    decrypt_mean,
    encrypt_integers,
    encrypt_update,
    sum_encrypted,
)

__all__ = [
    "DEFAULT_PARAMS",
    "NVFLARE_DEFAULT_PARAMS",
    "EncryptedUpdate",
    "Encryption",
    "HECostEstimate",
    "HEParams",
    "PublicContext",
    "RunningSum",
    "Scheme",
    "SecretContext",
    "check_loadable",
    "decrypt_integers",
    "decrypt_mean",
    "encrypt_integers",
    "encrypt_update",
    "estimate_cost",
    "generate_keyset",
    "init_keys",
    "load_public_context",
    "load_secret_context",
    "save_keyset",
    "save_public",
    "save_secret",
    "sum_encrypted",
]
