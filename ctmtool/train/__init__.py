"""One training loop (`loop.fit`) for every model; what differs is the objective it is given."""
