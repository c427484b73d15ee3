"""Which addresses an endpoint may reach: public ones only, unless private networks are allowed."""

import ipaddress
import socket

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
# IPv6 ranges whose last 32 bits are an IPv4 address a packet ends up at: IPv4-compatible (RFC 4291),
# IPv4-translated (RFC 2765) and the well-known NAT64 prefix (RFC 6052).
LAST_32_BITS = [ipaddress.ip_network(net) for net in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")]
# The local-use NAT64 prefix (RFC 8215) is subnetted by each network: the IPv4 address may sit where
# RFC 6052 section 2.2 puts it for a /48, /56, /64 or /96 prefix.
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def is_public_address(address: str) -> bool:
    """Python's ``is_global`` and not multicast; an IPv6 address carrying an IPv4 address is public only if
    every IPv4 address it may carry is too (docs/api.md)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, IPv6) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        return False
    return isinstance(ip, IPv4) or all(v4.is_global and not v4.is_multicast for v4 in embedded_ipv4(ip))


def embedded_ipv4(ip: IPv6) -> list[IPv4]:
    """The IPv4 addresses an IPv6 address carries (compatible, translated, NAT64, 6to4, Teredo); the caller
    unwraps IPv4-mapped ones first."""
    if ip.sixtofour:
        return [ip.sixtofour]
    if ip.teredo:
        return [ip.teredo[1]]  # the client's address, where the relay sends the packet
    if any(ip in network for network in LAST_32_BITS):
        return [IPv4(int(ip) & 0xFFFFFFFF)]
    if ip in LOCAL_NAT64:
        return local_nat64_candidates(ip)
    return []


def local_nat64_candidates(ip: IPv6) -> list[IPv4]:
    bits = f"{int(ip):0128b}"
    without_u = bits[:64] + bits[72:]  # bits 64 to 71 are the reserved "u" octet
    candidates = [without_u[start : start + 32] for start in (48, 56, 64)] + [bits[96:]]
    return [IPv4(int(candidate, 2)) for candidate in candidates]


def host_is_public(host: str) -> bool:
    """A literal IP in any spelling (``0x7f.1``, ``2130706433``, ``[::ffff:7f00:1]``) or a name whose every
    address is public. A name that does not resolve yet passes: the sender checks again at every connect.
    """
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return True
    return all(is_public_address(info[4][0]) for info in infos)
