"""The Hydra application: config schema and validation (`config`), jobs (`jobs`), outputs and plots (`outputs`),
sweep gathering (`gather`) and the entry points (`cli`)."""
