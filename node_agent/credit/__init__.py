"""Volunteer credit that cannot be faked: signed answers, trainer receipts, FLOPs per sample.

`receipts` is the one definition of the answer signature and the receipt wire format (pure: no sockets, no
clocks); `flops` says what one sample of an expert class costs, which the portal uses to price receipts.
"""
