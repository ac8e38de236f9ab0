"""Analysis on fitted models: metrics, queries, the diffraction gradient."""
