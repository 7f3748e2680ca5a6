"""Everything that speaks to Asterisk: ARI, FastAGI, and the simulated PBX."""
