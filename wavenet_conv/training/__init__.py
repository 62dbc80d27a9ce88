"""Training: the loop, batches, optimizers and schedules, recipes, distillation, ensembles of runs."""
