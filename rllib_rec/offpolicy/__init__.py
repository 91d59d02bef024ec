"""Interaction logs, behaviour policies, off-policy estimators and the Open Bandit Dataset."""
