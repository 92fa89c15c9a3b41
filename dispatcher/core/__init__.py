"""The small core every stage stands on: settings, states, errors, clock, privacy, campaign files."""
