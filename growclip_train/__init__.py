"""growclip_train: the application around the growclip_ds library: launches, phases, methods, run folders,
checkpoints, reports, plans and SLURM (open_clip keeps open_clip_train beside open_clip the same way)."""
