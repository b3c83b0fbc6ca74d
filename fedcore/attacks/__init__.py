"""Byzantine attacks for simulation: update attacks, label flipping, and their registry.

Simulation only: ``fedcore node`` never imports this package. See README.md for what each attack
needs. Pure numpy, no Flower.
"""

from fedcore.attacks.base import (
    Attack,
    DataAttack,
    attack_factory,
    attack_names,
    make_attack,
    register_attack,
)
from fedcore.attacks.labels import LabelFlip, flip_labels
from fedcore.attacks.updates import ALIE, IPM, Gaussian, Scaling, SignFlip, alie_z

register_attack("sign_flip", SignFlip)
register_attack("scaling", Scaling)
register_attack("gaussian", Gaussian)
register_attack("alie", ALIE)
register_attack("ipm", IPM)
register_attack("label_flip", LabelFlip)

__all__ = [
    "ALIE",
    "IPM",
    "Attack",
    "DataAttack",
    "Gaussian",
    "LabelFlip",
    "Scaling",
    "SignFlip",
    "alie_z",
    "attack_factory",
    "attack_names",
    "flip_labels",
    "make_attack",
    "register_attack",
]
