"""Provider feedback: parse events from every source, normalise them, apply them to the ledger."""
