"""The sweep's sampler: Optuna's TPE, seeded afresh for every trial from the sweep's seed and the trial's number.

One TPESampler(seed=s) per worker would make workers started with the same --seed suggest the same settings
until their histories differ; seeding each trial from (seed, trial number) keeps them apart, and still makes a
trial's suggestion a function of the seed and the trials finished before it. Needs Optuna (the sweep extra).
"""
from optuna.samplers import BaseSampler, TPESampler


class TrialSeededTPE(BaseSampler):
    """TPESampler(seed=seed + trial.number) for each trial; every other setting is TPE's default."""

    def __init__(self, seed=0):
        self.seed = seed
        self.tpe = TPESampler(seed=seed)

    def before_trial(self, study, trial):
        self.tpe = TPESampler(seed=self.seed + trial.number)
        self.tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self.tpe.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.tpe.reseed_rng()
