"""BP-modified local loss (Paper B): the estimator and the rules for its scalars."""
