"""Sweeps: one experiment over a grid of settings (:mod:`.sweep`), its shared stages planned
first (:mod:`.plan`), its cells (:mod:`.cells`) run serially, as local processes or as SLURM
job arrays (:mod:`.executors`). Above :mod:`sslpoison.experiment`, which never imports it."""
