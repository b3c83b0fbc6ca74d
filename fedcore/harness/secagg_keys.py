"""Secure aggregation in a simulation: each site's identity and member list, made into the run.

On a real federation each operator runs ``fedcore secagg keygen`` and the members exchange their
public keys out of band; a simulation plays every operator: a site whose ``[secagg]`` names no
identity gets one in its own state folder (``STATE/<site>/secagg/identity.key``, 0600; kept with
``--state``), and one whose file lists no members gets the simulated sites' public keys in its
``secagg/members.toml``. A site file that names either keeps its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedcore.config.site import SiteConfig
from fedcore.secagg.keyfile import load_identity, save_identity, write_members
from fedcore.secagg.keys import Identity
from fedcore.site.guard import state_paths

__all__ = ["simulation_identities"]


def simulation_identities(needed: bool, sites: Sequence[SiteConfig], states: Path) -> None:
    """Identities and member lists for the simulated sites (``needed``: the job uses secure aggregation)."""
    if not needed:
        return
    keys: dict[str, str] = {}
    for site in sites:
        if site.secagg is None:
            continue
        folder = state_paths(site, states).folder / "secagg"
        path = site.secagg.identity or folder / "identity.key"
        ident = (
            load_identity(path, site.name)
            if path.exists()
            else save_identity(Identity.generate(site.name), path)
        )
        keys[site.name] = ident.public_key.hex()
    for site in sites:
        if site.secagg is not None and site.secagg.members is None and site.secagg.members_file is None:
            write_members(state_paths(site, states).folder / "secagg" / "members.toml", keys)
