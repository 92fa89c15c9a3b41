"""Intake: recipient lists and campaign files in, validated rows into the ledger, messages onto the broker."""
