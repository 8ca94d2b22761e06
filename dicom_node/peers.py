"""Which network addresses a calling AE title may come from (``dicom.calling_ae_hosts``).

An AE title is only a name the peer chooses; binding it to the addresses of the modality or PACS that
owns it keeps another machine from using it. Addresses are IP addresses or networks (``10.1.2.0/24``),
never host names: a name would be resolved at connection time, slowly and spoofably. A calling AE
title without an entry may come from anywhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence

from dicom_node.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_calling_ae_hosts(hosts: Mapping[str, Sequence[str]], allowed_calling_aes: Collection[str],
                           accept_any_calling_ae: bool) -> dict[str, tuple[Network, ...]]:
    """The networks of each calling AE title; ConfigError naming the entry that is not an address or network,
    or an AE title that is not allowed at all."""
    networks: dict[str, tuple[Network, ...]] = {}
    for ae_title, addresses in hosts.items():
        if not accept_any_calling_ae and ae_title not in allowed_calling_aes:
            raise ConfigError(f"calling_ae_hosts names {ae_title!r}, which is not in allowed_calling_aes")
        if not addresses:
            raise ConfigError(f"calling_ae_hosts[{ae_title!r}] is empty: list its addresses, or leave it out")
        networks[ae_title] = tuple(_network(ae_title, address) for address in addresses)
    return networks


def _network(ae_title: str, address: str) -> Network:
    """One entry as a network; an IPv4-mapped IPv6 entry as the IPv4 network it names, as peers are matched."""
    try:
        network = ipaddress.ip_network(address, strict=True)
    except ValueError as exc:
        raise ConfigError(f"calling_ae_hosts[{ae_title!r}]: {address!r} is not an IP address or network "
                          f"(host names are not accepted): {exc}") from None
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def address_allowed(address: str, networks: Sequence[Network]) -> bool:
    """Whether ``address`` (as the socket reports it) lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)
