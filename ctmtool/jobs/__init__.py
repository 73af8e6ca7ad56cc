"""What a command does to many items, with user settings checked once: the sampling plan, inputs fitted to a
model, all-or-nothing outputs, run directories, sweeps, FID runs, likelihood of a data set, plots, export."""
