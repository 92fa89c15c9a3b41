"""Sending: one delivery from the broker through policy, rendering and a provider back into the ledger."""
