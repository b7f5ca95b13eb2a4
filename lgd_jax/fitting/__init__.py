"""Fitting a body to 2D keypoints: the objective, the update networks, the learned loop, the
classical optimisers (gradient descent with a line search, SMPLify), the priors, the refinement and
the scores of a fit. Imports geometry and body only."""
