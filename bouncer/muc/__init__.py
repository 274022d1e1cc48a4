"""Account-level MUC (SPEC §6): rooms joined once upstream, joins answered locally, traffic fanned out."""
