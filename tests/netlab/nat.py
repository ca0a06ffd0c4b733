"""nftables rulesets for the lab's home routers (pure text; `lab.py` loads them with `nft -f -`).

Two kinds of NAT, as volunteers meet them:

- "cone": a typical home router. `masquerade` keeps the source port when it is free, so one inside socket
  gets one outside mapping whatever the destination (endpoint-independent mapping); conntrack lets in only
  replies from the exact address and port the inside socket sent to (address-and-port-dependent filtering).
- "symmetric": `masquerade random,fully-random` draws a new outside port for every new destination, so the
  address a STUN server observes is useless to any other peer: hole punching fails and only TURN works.

Unsolicited inbound packets are dropped in both the forward and the input chains: a dropped probe then leaves
no conntrack entry behind (as on OpenWrt-style routers), so hole punching behaves as it does at home.
"""

from __future__ import annotations

NAT_KINDS = ("cone", "symmetric")
WAN = "wan"
LAN = "br-lan"


def router_ruleset(nat: str, *, loss_percent: int = 0) -> str:
    """The whole ruleset of a home router doing `nat` ("cone" or "symmetric"), dropping `loss_percent` % of
    the packets it forwards out of its uplink (random loss on the uplink, both NAT kinds)."""
    if nat not in NAT_KINDS:
        raise ValueError(f"nat must be one of {NAT_KINDS}, not {nat!r}")
    if not 0 <= loss_percent < 100:
        raise ValueError("loss_percent must be in 0..99")
    flags = " random,fully-random" if nat == "symmetric" else ""
    return f"""
table ip colearn_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN}" masquerade{flags}
    }}
}}
table inet colearn_filter {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        ct state established,related accept
        iifname "{LAN}" accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{LAN}" oifname "{WAN}" accept
    }}
}}
{loss_table(loss_percent)}
"""


def loss_table(loss_percent: int) -> str:
    """A table dropping `loss_percent` % of the packets leaving through the uplink (empty text for 0 %)."""
    if loss_percent == 0:
        return ""
    return f"""table inet colearn_loss {{
    chain egress {{
        type filter hook postrouting priority filter; policy accept;
        oifname "{WAN}" numgen random mod 100 < {loss_percent} drop
    }}
}}"""
