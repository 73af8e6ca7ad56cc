"""The maths: preconditioning and the trajectory interface, schedules, solvers, the one sampler, noise
streams, editing, translation, likelihood, the analytic mixture oracle, models and the torchrun helpers.
Trusts its inputs (the jobs layer checks user settings once) and raises only ValueError/TypeError for
programming errors."""
