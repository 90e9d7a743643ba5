"""What runs the layers below in a sequence: the pipeline of `toolkit run`, sweeps, analyses,
stability over seeds, and the serve stage."""
