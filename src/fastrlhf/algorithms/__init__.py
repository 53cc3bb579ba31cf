"""RLHF algorithms: advantage estimators, losses (pure functions) and algorithm graphs."""
