"""One YAML per registered model: defaults (the study's best setting) and the sweep's search space."""
