"""Losses of the CTM objective: distances d(x_est, x_tgt) and the adversarial (hinge) terms."""
