"""Secure aggregation with no single key holder: SecAgg+ (Bell et al. 2020; Bonawitz et al. 2017).

Pure and transport-free (no Flower): every message and state is a frozen dataclass with
``to_bytes``/``from_bytes``. See README.md for the protocol, the threat model, and the sparse
graph's security argument and parameters.
"""

from fedcore.secagg.client import (
    ClientState,
    mask_input,
    reveal_shares,
    share_keys,
    sign_survivors,
    start_round,
)
from fedcore.secagg.dp import DistributedNoise, Mechanism, Trust, round_event, site_epsilon
from fedcore.secagg.encoding import FixedPoint
from fedcore.secagg.keys import Identity, Members
from fedcore.secagg.messages import (
    KeyAdvertisement,
    KeyList,
    MaskedInput,
    RoundRequest,
    ShareBundle,
    ShareDelivery,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskReply,
    UnmaskRequest,
)
from fedcore.secagg.noise import discrete_gaussian, skellam
from fedcore.secagg.policy import RoundParams, SecAggPolicy, proposed_degree, round_params
from fedcore.secagg.server import ServerState

__all__ = [
    "ClientState",
    "DistributedNoise",
    "FixedPoint",
    "Identity",
    "KeyAdvertisement",
    "KeyList",
    "MaskedInput",
    "Mechanism",
    "Members",
    "RoundParams",
    "RoundRequest",
    "SecAggPolicy",
    "ServerState",
    "ShareBundle",
    "ShareDelivery",
    "SurvivorRequest",
    "SurvivorSignature",
    "Trust",
    "UnmaskReply",
    "UnmaskRequest",
    "discrete_gaussian",
    "mask_input",
    "proposed_degree",
    "reveal_shares",
    "round_event",
    "round_params",
    "share_keys",
    "sign_survivors",
    "site_epsilon",
    "skellam",
    "start_round",
]
