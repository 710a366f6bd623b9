"""The campaign workflow: states, the transitions machine, models and the compare-and-set store."""
